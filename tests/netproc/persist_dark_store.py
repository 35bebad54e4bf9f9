"""Helper process for tests/io/test_persist_descriptors.py: a dark descriptor store
written through to a node database.  Reads one hex descriptor per line on stdin, puts
it, and prints the put's status only after ``put`` returned (the acknowledgement a
``dark_put`` reply carries).  The test SIGKILLs it; it never closes the database.

    python persist_dark_store.py <database> <now>
"""
from __future__ import annotations

import sys

from qudag_core.dark.descriptor import DescriptorStore
from qudag_io.persist import NodeDatabase


def main() -> None:
    path, now = sys.argv[1], float(sys.argv[2])
    db = NodeDatabase.open(path)
    store = DescriptorStore()
    db.attach_descriptors(store, now)
    for n, line in enumerate(sys.stdin):
        if n >= 1000:  # bounded
            break
        status = store.put(bytes.fromhex(line.strip()), now)
        sys.stdout.write(status.value + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
