"""``python -m vouch.signer``: the ``vouch signer`` command without the top-level CLI.

Useful where only the signer is deployed, and what the tests run as a process.
"""

from vouch.cli.signer_cmd import signer

if __name__ == "__main__":
    signer(prog_name="vouch signer")
