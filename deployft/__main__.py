"""`python -m deployft ...` (also what `torchrun -m deployft finetune ...` runs on every rank)."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="deployft")
