"""`python -m loramem ...`: the same as the `loramem` command."""

from loramem.cli import main

if __name__ == "__main__":
    main()
