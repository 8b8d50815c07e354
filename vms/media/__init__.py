"""Media shared by hub, agent and simulator: segments, the segmenter, RTP and MPEG-PS."""
