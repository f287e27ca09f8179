"""PaS, Pruning-as-Search (Li et al., IJCAI 2022).

masks.py    per-channel masks (threshold + straight-through), their groups, the masked network's MACs
search.py   the search stage: joint SGD on weights and mask scalars, CE + α·(MACs − target)²
extract.py  the extract stage: kept channel indices, the physically smaller network and its weights
"""

from tas_jax.methods import Method
from tas_jax.methods.pas import extract, search

METHOD = Method(
    name="pas",
    description="Pruning-as-Search: per-channel binary masks (straight-through) with a MACs "
                "penalty, trained jointly with the weights; the kept channels are cut out",
    search=search.search,
    extract=extract.extract)
