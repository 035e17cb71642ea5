"""Operations: what runs beside the director for the people who operate it.

- ``procfs``: ``lvsuser run --procfs DIR`` keeps DIR/net/ip_vs{,_stats,_conn} in the kernel's formats;
- ``metrics``: ``lvsuser run --metrics ADDR:PORT`` serves Prometheus text (node_exporter's IPVS
  names, plus lvsuser_* ones);
- ``health``: the registry health checks report into (read by ``metrics``);
- ``service``: ``lvsuser service install|remove`` (the systemd unit) and the ipvsadm shim.
"""
