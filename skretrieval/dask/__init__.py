"""Scale out on Dask (``pip install skretrieval[dask]``): distributed encoding, a sharded gallery.

Not imported by ``import skretrieval``; ``distributed`` itself is imported only when a cluster
is used. Grid search across a cluster needs nothing from here: run
``GridSearchCV(ImageRetriever(...), ...).fit`` inside ``joblib.parallel_backend("dask")``.
"""

from ._encode import encode
from ._sharded import ShardedRetriever

__all__ = [
    "ShardedRetriever",
    "encode",
]
