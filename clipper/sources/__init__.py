"""Remote sources read in place of being downloaded: a loopback endpoint ffmpeg reads
(endpoint.py), serving blocks from a crash-safe cache shared by threads and daemons (store.py,
blocks.py), fetched from the origin with closed ranges through the SSRF-safe client
(origin.py); the failure cache (failures.py), output reuse (outputs.py), and the per-job
session that ties them together (session.py). Decisions: docs/DECISIONS.md, "Sources".
"""
