"""TensorFlow adapters: ``tensorflow-maml`` / ``tensorflow-protonet`` (tf.function graphs)
and their ``-xla`` variants (``tf.function(jit_compile=True)``).

Environment defaults are set here, before any submodule imports TensorFlow, because TF
reads them once at import / device initialisation; a value the user exported wins.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")           # no INFO/WARNING banners on stderr
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")   # do not grab all GPU memory up front
