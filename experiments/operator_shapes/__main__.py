"""Entry point: ``python -m experiments.operator_shapes [--out DIR]``."""

from experiments.operator_shapes import main

if __name__ == "__main__":
    main.main()
