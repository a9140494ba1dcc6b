"""`python -m fednode.node.worker --link-fd N`: the training worker a daemon starts."""

from fednode.node.worker.process import main

if __name__ == "__main__":
    main()
