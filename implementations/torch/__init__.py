"""PyTorch adapters: ``torch-maml`` (torch.func, tasks vmapped) and ``torch-protonet``."""
