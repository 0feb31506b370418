"""Running pktlab for a class on JupyterHub: the spawner that gives each student the course notebooks and a
bounded share of the machine (``classroom/`` holds the hub's configuration and ``scripts/hub.sh`` starts it)."""
