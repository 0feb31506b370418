"""A student's share of the machine: a cgroup per student, so that one student's flood cannot stall the others.

Every process of a student's server (its kernels, their labs and traffic programs) is in the student's cgroup:
CPU time is shared by weight among the students who want it (equal weights: a busy student gets no more than the
others who are busy too) and capped at ``cpu_max`` cores, memory at ``memory_max`` bytes.  The kernel's cgroup v2
(``/sys/fs/cgroup`` with the cpu and memory controllers) or v1 (its ``cpu`` and ``memory`` hierarchies) is
used, whichever the machine mounts; with neither, students are not bounded and :meth:`StudentLimits.apply` says so.
SystemdSpawner gives the same bounds through systemd where systemd runs the machine; this is for where it does not
(a container, a machine without systemd).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


@dataclass
class StudentLimits:
    """Where the students' cgroups go and what bounds them."""

    group: str = "pktlab-hub"  # the parent cgroup of every student's own
    cpu_max: float = 1.0  # cores a student may use at most
    memory_max: int = 2 << 30  # bytes
    root: Path = CGROUP

    def kind(self) -> str | None:
        """``"v2"``, ``"v1"`` or None (no cgroup this process can write)."""
        v2 = self.root / "cgroup.controllers"
        if v2.exists() and {"cpu", "memory"} <= set(v2.read_text().split()):
            return "v2"
        if (self.root / "cpu" / "cpu.shares").exists() and (self.root / "memory" / "memory.limit_in_bytes").exists():
            return "v1"
        return None

    def _dirs(self, user: str) -> list[Path]:
        if self.kind() == "v2":
            return [self.root / self.group / user]
        dirs = [self.root / "cpu" / self.group / user, self.root / "memory" / self.group / user]
        if (self.root / "cpuacct" / "cpuacct.usage").exists():  # v1 counts CPU time in a hierarchy of its own
            dirs.append(self.root / "cpuacct" / self.group / user)
        return dirs

    def dirs(self, user: str) -> list[Path]:
        """``user``'s cgroup folders (one with cgroup v2; cpu, memory and cpuacct with v1); [] without cgroups."""
        return self._dirs(user) if self.kind() else []

    def cpu_seconds(self, user: str) -> float:
        """CPU time ``user``'s processes have used in their cgroup, in seconds."""
        if self.kind() == "v2":
            stat = dict(line.split() for line in (self._dirs(user)[0] / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        dirs = self._dirs(user)
        if len(dirs) < 3:
            raise OSError("this machine's cgroup v1 has no cpuacct hierarchy: CPU time per student is not counted")
        return int((dirs[2] / "cpuacct.usage").read_text()) / 1e9

    def throttled(self, user: str) -> int:
        """How many times the kernel held ``user``'s processes back at their CPU cap."""
        stat = dict(line.split() for line in (self._dirs(user)[0] / "cpu.stat").read_text().splitlines())
        return int(stat["nr_throttled"])

    def apply(self, user: str, pid: int) -> str:
        """Put process ``pid`` (a student's server: its children follow) in ``user``'s cgroup; what was done."""
        kind = self.kind()
        if kind is None:
            return f"{user}: no writable cgroup here: the student's CPU and memory are not bounded"
        quota = int(self.cpu_max * PERIOD_US)
        if kind == "v2":
            parent = self.root / self.group
            parent.mkdir(exist_ok=True)
            (parent / "cgroup.subtree_control").write_text("+cpu +memory")
            d = parent / user
            d.mkdir(exist_ok=True)
            (d / "cpu.weight").write_text("100")
            (d / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            (d / "memory.max").write_text(str(self.memory_max))
        else:
            cpu, mem, *acct = self._dirs(user)
            for d in (cpu, mem, *acct):
                d.mkdir(parents=True, exist_ok=True)
            (cpu / "cpu.shares").write_text("1024")
            (cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(quota))
            (mem / "memory.limit_in_bytes").write_text(str(self.memory_max))
        for d in self._dirs(user):
            (d / "cgroup.procs").write_text(str(pid))
        return (f"{user}: cgroup {kind} {self.group}/{user}: CPU shared by weight, at most {self.cpu_max:g} cores, "
                f"memory at most {self.memory_max >> 20} MiB")  # fmt: skip

    def pids(self, user: str) -> list[int]:
        """The processes in ``user``'s cgroup now."""
        out: set[int] = set()
        for d in self.dirs(user):
            try:
                out |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
            except OSError:
                continue
        return sorted(out)

    def remove(self, user: str) -> None:
        """Remove ``user``'s cgroup once its processes are gone (an emptied cgroup only; others stay)."""
        for d in self.dirs(user):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise OSError(f"cgroup {d} still holds processes {self.pids(user)}: {exc}") from None

    def remove_parent(self) -> bool:
        """Remove the students' parent cgroup if no student's is left in it (the hub's end); whether it is gone."""
        gone = True
        for parent in {d.parent for d in self.dirs("-")}:
            try:
                parent.rmdir()
            except FileNotFoundError:
                pass
            except OSError:  # a student's cgroup is still in it
                gone = False
        return gone


def kill_all(limits: StudentLimits, user: str) -> list[int]:
    """SIGKILL every process left in ``user``'s cgroup (a server that did not end its kernels); which ones."""
    import signal

    left = limits.pids(user)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
