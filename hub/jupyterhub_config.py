"""JupyterHub for one course: students fetch and submit labs in the Assignment List, the lecturer releases,
collects and gives feedback in formgrader, and grades with the course's judge (`assignments/grade.py`).

Start it with `make hub` (hub/README.md says what it does and how to swap the parts for production). It reads:

- ``MINIMOE_HUB_IP`` / ``MINIMOE_HUB_PORT``: where it listens (default 127.0.0.1:8000; put HTTPS in front of it, or
  set ``c.JupyterHub.ssl_cert``/``ssl_key``, before it listens anywhere else);
- ``MINIMOE_LECTURERS`` / ``MINIMOE_STUDENTS``: comma-separated unix user names (PAM logs them in); only they may
  log in; lecturers are the hub's admins and get formgrader;
- ``MINIMOE_EXCHANGE``: nbgrader's exchange folder (default /srv/nbgrader/exchange), created by hub/prepare.py;
- ``MINIMOE_HUB_STATE``: where the hub keeps its database, cookie secret and proxy token (default hub/_state);
- ``MINIMOE_HUB_ENV``: the course's environment for the users (written by hub/prepare.py into _state/env.env);
- ``MINIMOE_HUB_API_PORT`` / ``MINIMOE_PROXY_API_PORT``: the hub's and the proxy's internal ports (8081, 8001);
- ``MINIMOE_CHP``: the configurable-http-proxy executable (default: the one hub/prepare.py installs with npm).
"""

import os
import sys
from pathlib import Path

HUB = Path(__file__).resolve().parent
# The course's environment, which the users' servers and kernels run from (hub/prepare.py chooses or builds it).
VENV_BIN = Path(os.environ.get("MINIMOE_HUB_ENV", sys.prefix)) / "bin"
STATE = Path(os.environ.get("MINIMOE_HUB_STATE", HUB / "_state"))
STATE.mkdir(parents=True, exist_ok=True, mode=0o700)


def names(variable: str) -> set[str]:
    return {n.strip() for n in os.environ.get(variable, "").split(",") if n.strip()}


LECTURERS, STUDENTS = names("MINIMOE_LECTURERS"), names("MINIMOE_STUDENTS")
if not LECTURERS:
    raise SystemExit("MINIMOE_LECTURERS names no lecturer (comma-separated unix user names)")

c = get_config()  # noqa: F821 (provided by traitlets)

c.JupyterHub.ip = os.environ.get("MINIMOE_HUB_IP", "127.0.0.1")
c.JupyterHub.port = int(os.environ.get("MINIMOE_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("MINIMOE_HUB_API_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ.get('MINIMOE_PROXY_API_PORT', '8001')}"
c.JupyterHub.db_url = f"sqlite:///{STATE / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(STATE / "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")
c.ConfigurableHTTPProxy.command = [os.environ.get("MINIMOE_CHP", str(HUB / "node_modules" / ".bin" /
                                                                   "configurable-http-proxy"))]

# Who logs in: local unix users through PAM. Production: the university's single sign-on instead, e.g.
# `c.JupyterHub.authenticator_class = "generic-oauth"` (oauthenticator) or LTI from the LMS (ltiauthenticator),
# with the same allowed/admin lists.
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.allowed_users = LECTURERS | STUDENTS
c.Authenticator.admin_users = LECTURERS

# Each user's server is a process of theirs, from the course's environment. Production, for a class of hundreds:
# KubeSpawner (Zero to JupyterHub on Kubernetes) with the course image and per-user CPU/memory limits
# (`c.KubeSpawner.cpu_limit`, `mem_limit`); on one machine, SystemdSpawner gives the same limits with cgroups.
c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [str(VENV_BIN / "jupyterhub-singleuser")]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"


def role_config(spawner) -> str:
    """The Jupyter config folder of the user's role: which nbgrader extensions they see, where the exchange is."""
    return str(HUB / "jupyter-config" / ("lecturer" if spawner.user.name in LECTURERS else "student"))


c.Spawner.environment = {
    "JUPYTER_CONFIG_PATH": role_config,
    "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
    "MINIMOE_EXCHANGE": os.environ.get("MINIMOE_EXCHANGE", "/srv/nbgrader/exchange"),
    "OMP_NUM_THREADS": "1",
}
