"""Labs: network namespaces joined by veth links, their hosts, and bounded traffic programs."""
