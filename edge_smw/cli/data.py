"""edge-smw data."""

from __future__ import annotations

import argparse

HELP = "find, download or install the real face crops (SMILEsmileD) that tests and benches use"
EXAMPLES = """
  edge-smw data smiles                      # where the real crops are; downloads when online
  edge-smw data smiles --no-download        # only look ($EDGE_SMW_SMILES_DIR, ../shared, cache)
  edge-smw data smiles --from ~/SMILEsmileD # verify a copy you brought, install it in the cache
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=["smiles"], help="the data set: smiles (SMILEsmileD)")
    p.add_argument("--from", dest="from_dir", metavar="DIR",
                   help="a copy you brought (level folders, or a clone of the repository): "
                        "verified, then copied into the user cache")
    p.add_argument("--no-download", action="store_true",
                   help="only look for a copy; exit 1 when there is none")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import sys

    from edge_smw.data.smiles import (
        GET_SMILES_COMMAND,
        SMILES_DIR_ENV,
        install_smiles,
        resolve_smiles_dir,
        verify_smiles,
    )

    if args.from_dir:
        folder = install_smiles(args.from_dir, progress=not args.quiet)
        source = f"installed from {args.from_dir}"
    else:
        found = resolve_smiles_dir(download=not args.no_download, progress=not args.quiet)
        if found is None:
            print(f"edge-smw data: no copy of SMILEsmileD found (looked at ${SMILES_DIR_ENV}, "
                  f"../shared/data/smilesmiled and the user cache); get it with "
                  f"`{GET_SMILES_COMMAND}` (online) or `{GET_SMILES_COMMAND} --from DIR`",
                  file=sys.stderr)
            return 1
        folder, source = found
    counts = verify_smiles(folder)
    print(f"{folder}  ({source}; " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
    return 0
