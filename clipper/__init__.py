"""clipper: a daemon that turns "clip this video" messages in a Redis list into clips and
thumbnails in object storage."""

__version__ = "0.1.0"
