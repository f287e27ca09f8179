"""Compile time of a network initialiser on CPU: XLA defaults (O2) against parallel.jit_once (O0).

python benchmarks/init_compile.py O2|O0    (one process per figure: no in-memory cache)
"""

import sys
import time

import jax

sys.path.insert(0, "tests")  # test_arch.pruned_cifar: a pruned CIFAR ResNet-20
from test_arch import pruned_cifar

from tas_jax import parallel
from tas_jax.models import resnet

a = pruned_cifar()
m = resnet.build(a)
args = (jax.random.key(0), resnet.dummy_input(a, 2))
opts = {} if sys.argv[1] == "O2" else parallel.ONCE_CPU_OPTIONS
lowered = jax.jit(m.init).lower(*args)
t = time.perf_counter()
lowered.compile(compiler_options=opts)
print(sys.argv[1], "%.2f" % (time.perf_counter() - t))
