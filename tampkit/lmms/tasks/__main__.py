import sys

from tampkit.lmms.tasks import write_local_tasks

print(write_local_tasks(sys.argv[1] if len(sys.argv) > 1 else None))
