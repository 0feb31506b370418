# JupyterHub for a pktlab class on one machine; scripts/hub.sh starts it (`make hub STUDENTS=N`) with the
# PKTLAB_HUB_* variables below.  What it gives:
# - students are the Unix users of the group PKTLAB_HUB_GROUP; each logs in with their password (PAM);
# - the teacher (PKTLAB_HUB_TEACHER) logs in the same way and grades there: nbgrader's formgrader over the course in
#   their ~/course, the students' Assignments tab and nbgrader's exchange in PKTLAB_HUB_SHARED
#   (pktlab.hub.classroom);
# - each student's server runs as that user (pktlab.hub.spawner.ClassroomSpawner, a LocalProcessSpawner), from
#   pktlab's shared environment (the venv this hub runs from: root's, every user runs it, none changes it); their
#   kernels are ordinary users' processes, live through user namespaces;
# - the course notebooks in ~/pktlab-notebooks on the first start (the assignments without their grading folders);
# - a cgroup per student (CPU by equal weight and capped, memory capped: pktlab.hub.limits);
# - idle servers stopped after PKTLAB_HUB_IDLE seconds (jupyterhub-idle-culler);
# - the proxy is configurable-http-proxy from npm, on loopback beside the hub.
import atexit
import os
import sys
from pathlib import Path

from pktlab.hub.classroom import Classroom
from pktlab.hub.limits import StudentLimits
from pktlab.hub.spawner import NOTEBOOKS_DIR, ClassroomSpawner

c = get_config()  # noqa: F821 - JupyterHub's config loader defines it

state = Path(os.environ["PKTLAB_HUB_STATE"])
port = int(os.environ.get("PKTLAB_HUB_PORT", "8000"))
venv_bin = Path(sys.executable).parent

c.JupyterHub.ip = os.environ.get("PKTLAB_HUB_IP", "127.0.0.1")
c.JupyterHub.port = port
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = port + 1
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{port + 2}"
c.ConfigurableHTTPProxy.command = [os.environ["PKTLAB_HUB_PROXY"]]
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.cleanup_servers = True  # the hub's stop stops every student's server (and their kernels and labs)

c.JupyterHub.authenticator_class = "pam"
c.PAMAuthenticator.allowed_groups = {os.environ.get("PKTLAB_HUB_GROUP", "pktlab-students")}
teacher = os.environ.get("PKTLAB_HUB_TEACHER", "")
if teacher:
    c.PAMAuthenticator.allowed_users = {teacher}

c.JupyterHub.spawner_class = ClassroomSpawner
c.ClassroomSpawner.course_notebooks = os.environ["PKTLAB_HUB_NOTEBOOKS"]
if teacher:
    c.ClassroomSpawner.classroom = Classroom(Path(os.environ["PKTLAB_HUB_SHARED"]), teacher)
limits = StudentLimits(
    cpu_max=float(os.environ.get("PKTLAB_HUB_CPUS", "1")),
    memory_max=int(os.environ.get("PKTLAB_HUB_MEMORY_MB", "2048")) << 20,
)
c.ClassroomSpawner.limits = limits
atexit.register(limits.remove_parent)  # after the hub stopped every server (and each removed its own cgroup)
c.Spawner.cmd = [str(venv_bin / "jupyterhub-singleuser")]
c.Spawner.default_url = f"/lab/tree/{NOTEBOOKS_DIR}"
c.Spawner.notebook_dir = "~"
c.Spawner.args = ["--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
c.Spawner.environment = {"PATH": f"{venv_bin}:/usr/bin:/bin:/usr/sbin:/sbin"}
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120

idle = int(os.environ.get("PKTLAB_HUB_IDLE", "3600"))
c.JupyterHub.services = [
    {"name": "idle-culler", "command": [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={idle}"]}
]
c.JupyterHub.load_roles = [
    {"name": "idle-culler", "services": ["idle-culler"],
     "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]},
]
# the idle culler ignores SIGINT: the hub's stop would wait 30 s for it; a student's server gets the full 30 s to end
# its kernels (and their labs) cleanly
c.LocalProcessSpawner.interrupt_timeout = 3
c.ClassroomSpawner.interrupt_timeout = 30
