"""`ixt up | status | down launcher.kind=ray`: the online stack placed on a Ray cluster.

Ray is the engine; this module only asks it for places. Every service of `supervisor.stack` (the
same argv as `ixt up` on one machine) gets a detached actor, `RoleHost`, which holds the service's
resources and runs it as a background process on its node with `supervisor.up` (pid, log and status
files in `run.run_dir`, which every node must share, as the ledger and weight files already ask):

    learner       a placement group, one bundle per learner node (`launcher.learner_nodes`) with
                  its ranks' GPUs; one torchrun per bundle (`supervisor.learner_ranks`)
    orchestrator  CPU only, on the learner's first node: the stream's sockets bind on one host
    reward        `launcher.reward_gpus` GPUs, anywhere
    generator-i   `generator.tensor_parallel_size` GPUs each, anywhere

Roles find each other through Ray: once every actor is placed, their nodes' addresses become the
roles' addresses (`stream.host` = the learner's node, `reward.host` / `client.address` = the reward
service's node). When everything landed on one node they stay as configured (loopback).
Actors live in a Ray namespace named after the run folder, so `status`, `down` and a later `up`
find them from any process that joins the cluster. `up` starts only what is not running: a dead
role is started again where its actor is (placed again if its node is gone), and the learner's
ranks as a whole. GPUs are Ray's to hand out: `run.gpus` is ignored here.

Left out: autoscaling, Ray's own actor restarts (the next `up` restarts a dead role), shipping logs
off the nodes, and jobs submitted with `ray job submit` (`ixt up` is a short-lived Ray driver).
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

from ixt_stream.config import ConfigError, IxtConfig
from ixt_stream.metrics import read_status
from ixt_stream.online import supervisor
from ixt_stream.online.supervisor import Service

PLACE_TIMEOUT_S = 120.0
"""How long `up` waits for Ray to find room for a role before it says which one has none."""
LEARNER_GROUP = "learner"


class RoleHost:
    """One service's place on the cluster (a Ray actor): starts, reports on and stops the service's
    process on its node."""

    def __init__(self, run_dir: str, name: str):
        self.run_dir, self.name = run_dir, name

    def node(self) -> dict:
        import ray

        return {"ip": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id()}

    def start(self, service: Service) -> bool:
        """Start the service unless it runs; True if started. Its Python is this node's (every
        service's argv starts with the interpreter, `supervisor.stack`)."""
        return bool(supervisor.up(self.run_dir, [replace(service, argv=[sys.executable, *service.argv[1:]])]))

    def status(self) -> list[dict]:
        return [{**row, "node": self.node()["ip"]} for row in supervisor.status(self.run_dir, [self.name])]

    def stop(self, grace_s: float) -> dict[str, str]:
        return supervisor.down(self.run_dir, grace_s, [self.name])


def namespace(cfg: IxtConfig) -> str:
    """The Ray namespace of a run: one per run folder (its absolute path, the same on every node)."""
    return "ixt-" + hashlib.sha1(str(Path(cfg.run.run_dir).resolve()).encode()).hexdigest()[:12]


def _ray(cfg: IxtConfig):
    """Ray, joined to `launcher.ray_address` in the run's namespace (or the session already joined)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("launcher.kind: ray needs Ray installed (pip install '.[ray]')") from None
    ns = namespace(cfg)
    if not ray.is_initialized():
        ray.init(address=cfg.launcher.ray_address, namespace=ns, log_to_driver=False, configure_logging=False)
    elif ray.get_runtime_context().namespace != ns:
        raise ConfigError(f"launcher: this process joined Ray in namespace {ray.get_runtime_context().namespace!r}, "
                          f"run.run_dir={cfg.run.run_dir} lives in {ns!r}")
    return ray


def _hosts(ray, cfg: IxtConfig) -> dict[str, object]:
    """name -> actor handle of the run's live RoleHosts."""
    ns = namespace(cfg)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == ns]
    return {n: ray.get_actor(n, namespace=ns) for n in sorted(names)}


def _learner_services(cfg: IxtConfig, overrides: list[str], master_ip: str) -> list[Service]:
    """One service per learner node: that node's torchrun (a plain `ixt serve learner` for one rank)."""
    lc, nodes = cfg.learner, cfg.launcher.learner_nodes
    serve = ["ixt_stream.cli", "serve", "learner", *overrides]
    if lc.num_gpus == 1:
        return [Service("learner", [sys.executable, "-m", *serve], lc.threads, _accelerator(cfg))]
    return [Service("learner" if i == 0 else f"learner-node{i}",
                    [*supervisor.learner_ranks(lc.num_gpus, lc.master_port, nodes, i, master_ip), *serve],
                    lc.threads, _accelerator(cfg)) for i in range(nodes)]


def _accelerator(cfg: IxtConfig) -> dict[str, str]:
    return {"DS_ACCELERATOR": "cuda"} if cfg.launcher.gpus else {}


def _place(ray, cfg: IxtConfig, names: list[str], hosts: dict) -> dict:
    """Create the missing RoleHosts of `names` (a learner's group whole); returns name -> handle."""
    from ray.util.placement_group import get_placement_group, placement_group, remove_placement_group
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    lc, la, gen = cfg.learner, cfg.launcher, cfg.generator
    actor = ray.remote(RoleHost).options
    common = {"namespace": namespace(cfg), "lifetime": "detached", "max_concurrency": 4}
    learners = [n for n in names if n.startswith("learner")]
    if any(n not in hosts for n in learners):  # the learner's nodes are placed together
        for n in learners:
            if n in hosts:
                ray.get(hosts.pop(n).stop.remote(cfg.run.stop_grace_s))
                ray.kill(ray.get_actor(n, namespace=namespace(cfg)))
        try:
            remove_placement_group(get_placement_group(LEARNER_GROUP))
        except ValueError:
            pass
        per_node = lc.num_gpus // la.learner_nodes
        bundle = {"CPU": la.cpus_per_role * per_node, **({"GPU": per_node} if la.gpus else {})}
        pg = placement_group([bundle] * la.learner_nodes, strategy="STRICT_SPREAD" if la.learner_nodes > 1 else
                             "PACK", name=LEARNER_GROUP, lifetime="detached")
        if not ray.wait([pg.ready()], timeout=PLACE_TIMEOUT_S)[0]:
            remove_placement_group(pg)
            raise ConfigError(f"launcher: the cluster has no room for the learner ({la.learner_nodes} x {bundle})")
        for i, n in enumerate(learners):
            strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)
            hosts[n] = actor(name=n, num_cpus=bundle["CPU"], num_gpus=bundle.get("GPU", 0),
                             scheduling_strategy=strategy, **common).remote(cfg.run.run_dir, n)
    learner_node = ray.get(hosts["learner"].node.remote(), timeout=PLACE_TIMEOUT_S)["node_id"] if learners else None
    for n in names:
        if n in hosts:
            continue
        gpus = (la.reward_gpus if n == "reward" else gen.tensor_parallel_size if n.startswith("generator")
                else 0) if la.gpus else 0
        where = (NodeAffinitySchedulingStrategy(learner_node, soft=False) if n == "orchestrator" and learner_node
                 else "DEFAULT")
        hosts[n] = actor(name=n, num_cpus=la.cpus_per_role, num_gpus=gpus, scheduling_strategy=where,
                         **common).remote(cfg.run.run_dir, n)
    return hosts


def up(cfg: IxtConfig, overrides: list[str]) -> list[str]:
    """Place and start every service not running (the learner's ranks as a whole); returns the
    names started."""
    if cfg.launcher.cpus_per_role <= 0:
        raise ConfigError("launcher.cpus_per_role: must be > 0 (Ray places by what a role reserves)")
    ray = _ray(cfg)
    local = replace(cfg, run=replace(cfg.run, gpus={}))  # GPUs are Ray's to give
    plain = supervisor.stack(local, overrides)
    names = [n for s in plain for n in ([s.name] if s.name != "learner" else
                                        [s.name for s in _learner_services(cfg, overrides, "")])]
    hosts = _place(ray, cfg, names, _hosts(ray, cfg))
    try:
        nodes = dict(zip(names, ray.get([hosts[n].node.remote() for n in names], timeout=PLACE_TIMEOUT_S),
                         strict=True))
    except ray.exceptions.GetTimeoutError:
        raise ConfigError("launcher: Ray found no room for some roles within "
                          f"{PLACE_TIMEOUT_S:.0f} s; `ray status` shows what the cluster has") from None
    found = []
    if len({n["ip"] for n in nodes.values()}) > 1:  # roles on several nodes: each one's address
        if "learner" in nodes:
            found = [f"stream.host={nodes['learner']['ip']}"]
        if "reward" in nodes:
            ip = nodes["reward"]["ip"]
            found += [f"reward.host={ip}", f"client.address={ip}:{cfg.reward.port}"]
    wired = [*overrides, *found]
    services = [s for p in supervisor.stack(local, wired)
                for s in (_learner_services(cfg, wired, nodes.get("learner", {}).get("ip", "127.0.0.1"))
                          if p.name == "learner" else [p])]
    alive = {r["name"]: r["alive"] for h in hosts.values() for r in ray.get(h.status.remote())}
    learner_names = [s.name for s in services if s.name.startswith("learner")]
    if learner_names and not all(alive.get(n) for n in learner_names):  # one rank lost: the group restarts
        ray.get([hosts[n].stop.remote(cfg.run.stop_grace_s) for n in learner_names])
    started = []
    for s in services:
        if ray.get(hosts[s.name].start.remote(s)):
            started.append(s.name)
    return started


def status(cfg: IxtConfig) -> list[dict]:
    """One row per placed service, as `supervisor.status` gives them, plus the node it runs on."""
    ray = _ray(cfg)
    rows = []
    for name, host in _hosts(ray, cfg).items():
        try:
            rows += ray.get(host.status.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):  # its node is gone
            rows.append({"name": name, "pid": None, "alive": False, "status": read_status(cfg.run.run_dir, name)})
    return rows


def down(cfg: IxtConfig) -> dict[str, str]:
    """Stop every service (SIGTERM, `run.stop_grace_s`, SIGKILL, on its node), then release its
    place: the actors and the learner's placement group. Returns name -> outcome."""
    from ray.util.placement_group import get_placement_group, remove_placement_group

    ray = _ray(cfg)
    hosts = _hosts(ray, cfg)
    outcome = {}
    for name in reversed(list(hosts)):  # producers (generators) first
        try:
            outcome |= ray.get(hosts[name].stop.remote(cfg.run.stop_grace_s), timeout=cfg.run.stop_grace_s + 30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            outcome[name] = "node lost"
        ray.kill(hosts[name])
    try:
        remove_placement_group(get_placement_group(LEARNER_GROUP))
    except ValueError:
        pass
    return outcome
