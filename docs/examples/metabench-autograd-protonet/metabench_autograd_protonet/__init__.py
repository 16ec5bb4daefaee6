"""metabench-autograd-protonet: autograd adapters for metabench, from `metabench new-adapter`.

Keep this file free of imports: metabench imports `metabench_autograd_protonet.entries`
(and so this package) in every process that lists adapters, where autograd must not be
imported. Only `backend` and the adapters' modules import autograd, in its own process.
"""
