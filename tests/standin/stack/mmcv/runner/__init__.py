from .dist_utils import get_dist_info, init_dist  # noqa: F401
