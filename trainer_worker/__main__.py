"""`python -m trainer_worker`: the same as `loramem worker`."""

from server.cli import main

if __name__ == "__main__":
    main(["worker"])
