"""Imported by the fork server of a local cluster (:data:`isoview_dask.preload.FORKSERVER_MODULES`):
importing it runs :func:`isoview_dask.preload.warm_up` once, so the workers forked from the server
start with numba's compiled kernels loaded and matplotlib's fonts read. Nothing else imports it."""

from .preload import warm_up

warm_up()

# Objects created so far (the imported modules, the loaded kernels) move to the collector's permanent
# generation: its passes in the forked workers then never write to the pages they share with this
# server, which would copy each such page into every worker.
import gc  # noqa: E402

gc.freeze()
