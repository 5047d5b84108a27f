"""Entry point: ``python -m experiments.benchmarks {losses,lm_head,roots,train_step} [--quick]``."""

from experiments.benchmarks import main

if __name__ == "__main__":
    main.main()
