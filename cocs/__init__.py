"""cocs: Context Clusters ("Image as Set of Points", ICLR 2023) as a small, tested library.

Importing the package registers every variant with timm: ``timm.create_model("coc_tiny")``, and
the two CIFAR peers of ``coc_cifar`` (``resnet_cifar``, ``vit_cifar``, in ``cocs.peers``).
"""

from . import dense as _dense  # noqa: F401  (registers semantic_fpn)
from . import model as _model  # noqa: F401  (registers the timm variants)
from . import peers as _peers  # noqa: F401  (registers resnet_cifar and vit_cifar)
from . import pointmlp as _pointmlp  # noqa: F401  (registers pointmlp_elite, pointmlp_elite_coc)
from . import setmodel as _setmodel  # noqa: F401  (registers coc_points)
from .cluster import Cluster, ClusterOutput, cluster_groups, context_cluster, context_cluster_sets
from .fingerprint import model_fingerprint
from .model import ContextCluster, capture_assignments, capture_similarities, create_model
from .official import OFFICIAL_VARIANTS, load_official_checkpoint
from .points import coordinates, image_to_points, points_to_image, with_positions

__all__ = [
    "Cluster",
    "ClusterOutput",
    "ContextCluster",
    "OFFICIAL_VARIANTS",
    "capture_assignments",
    "capture_similarities",
    "cluster_groups",
    "context_cluster",
    "context_cluster_sets",
    "coordinates",
    "create_model",
    "image_to_points",
    "load_official_checkpoint",
    "model_fingerprint",
    "points_to_image",
    "variants",
    "with_positions",
]


def variants() -> list[str]:
    """Every Context Cluster image variant registered with timm by this package (the point-set
    model ``coc_points`` of :mod:`cocs.setmodel` takes point clouds, not images)."""
    import timm
    from timm.models import model_entrypoint

    return sorted(
        n for n in timm.list_models("coc_*") if model_entrypoint(n).__module__ == _model.__name__
    )
