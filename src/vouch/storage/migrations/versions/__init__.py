"""Migration scripts, one per schema revision (a package so they ship with vouch)."""
