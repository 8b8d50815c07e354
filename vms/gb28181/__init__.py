"""GB/T 28181 access: devices and platforms register with the center by SIP; ``sip``, ``digest`` and
``manscdp`` are the pure codecs underneath (no sockets, files or threads), so they test fast."""
