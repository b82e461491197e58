"""Generated protobuf modules of the signer API (see ``regen.py``); do not edit them."""
