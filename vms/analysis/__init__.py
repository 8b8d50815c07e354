"""Frame analysis: video-quality diagnosis (视频质量诊断) and motion on relayed media.

``checks`` (pure metrics), ``motion``, ``analyzer`` (per-camera state and hysteresis),
``sampler`` (segment decoding) and ``pool`` (worker processes) depend on nothing of the hub, so an
edge agent can run them; ``results`` is the hub's side.
"""
