"""TensorFlow adapters: ``tensorflow-maml`` / ``tensorflow-protonet`` (tf.function graphs)
and their ``-xla`` variants (``tf.function(jit_compile=True)``).

Environment defaults are set here, before any submodule imports TensorFlow, because TF
reads them once at import / device initialisation; a value the user exported wins.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")           # no INFO/WARNING banners on stderr
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")   # do not grab all GPU memory up front

# The entries the registry lists (the framework record's ``entries``); the adapters' own
# modules import the framework, this one does not.
from bench.core.registry import AdapterEntry  # noqa: E402 - after the environment defaults above

ENTRIES = [
    # TF's MAML default differs by device: on a CPU XLA measured fastest (Omniglot 5w1s
    # outer step 115 ms against graph's 176, sinusoid 1.29 against 3.26 ms:
    # results/20261129-cpu-variants) and passes parity; on a GPU it is not measured yet, so
    # graph mode stays. ProtoNet's graph mode measured faster than XLA on the CPU (247 ms
    # against 343): graph everywhere.
    AdapterEntry("tensorflow-maml", "tensorflow", ("maml", "fomaml"),
                 "implementations.tensorflow.maml:TFMAML", options={"jit_compile": False}, default=("cuda",),
                 description="nested GradientTape MAML in tf.function (graph)"),
    AdapterEntry("tensorflow-anil", "tensorflow", ("anil",), "implementations.tensorflow.anil:TFANIL",
                 options={"jit_compile": False}, description="nested GradientTape ANIL in tf.function (graph)"),
    AdapterEntry("tensorflow-protonet", "tensorflow", ("protonet",),
                 "implementations.tensorflow.protonet:TFProtoNet", options={"jit_compile": False},
                 description="Prototypical Networks in tf.function (graph)"),
    AdapterEntry("tensorflow-maml-xla", "tensorflow", ("maml", "fomaml"),
                 "implementations.tensorflow.maml:TFMAML", options={"jit_compile": True}, default=("cpu",),
                 description="as tensorflow-maml, tf.function(jit_compile=True)"),
    AdapterEntry("tensorflow-protonet-xla", "tensorflow", ("protonet",),
                 "implementations.tensorflow.protonet:TFProtoNet", options={"jit_compile": True},
                 default=False, description="as tensorflow-protonet, tf.function(jit_compile=True)"),
    # Reptile, like ANIL, in TF's default form, graph mode, everywhere: its steps are not timed
    # yet (tensorflow-reptile@jit_compile=true is the XLA form)
    AdapterEntry("tensorflow-reptile", "tensorflow", ("reptile",), "implementations.tensorflow.reptile:TFReptile",
                 options={"jit_compile": False}, description="GradientTape Reptile in tf.function (graph)"),
]
