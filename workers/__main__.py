"""`python -m workers`: the same worker as `flask worker`."""

from webapp import create_app
from workers.worker import run_worker

if __name__ == "__main__":
    run_worker(create_app())
