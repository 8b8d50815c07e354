"""Frame analysis: video-quality diagnosis (视频质量诊断) and motion on relayed media.

``checks`` (pure metrics), ``motion``, ``analyzer`` (per-camera state and hysteresis),
``sampler`` (segment decoding), ``pool`` (worker processes), ``substream`` (which of a camera's
streams is read) and ``normals`` depend on nothing of the hub, so an edge agent can run them;
``vms/services/quality.py`` is the hub's side.
"""
