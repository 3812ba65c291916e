"""The kube target: the platform on a Kubernetes cluster, through the official ``kubernetes`` client.

Components map to Kubernetes objects by name: component ``prometheus`` is the Deployment and
the Service ``prometheus`` in the lab's namespace, and its pods carry
``app.kubernetes.io/name: prometheus``. The manifests live in ``k8s/``;
``tests/kube/test_manifests.py`` checks that they agree with the component declarations.

Example::

    from labkit import platform
    from labkit.core.config import LabConfig
    from labkit.targets.kube.target import KubeTarget

    target = KubeTarget(LabConfig.from_env(target="kube"), platform.components())
    target.up(["monitoring"])            # + kubectl kustomize k8s/overlays/kind; apply; wait
    url = target.endpoint("prometheus")  # http://127.0.0.1:<port>, a port-forward
    target.close()                       # stops the port-forwards; the platform keeps running
"""

from __future__ import annotations

import base64
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labkit.core.config import LabConfig
from labkit.core.console import progress
from labkit.core.errors import (
    ConfigError,
    ImageMissingError,
    KubeError,
    MissingCapabilityError,
    NotRunningError,
    TimeoutExpired,
)
from labkit.core.wait import until
from labkit.platform.component import Component
from labkit.platform.layers import cdn, media
from labkit.platform.layers.media import origin
from labkit.platform.layers.monitoring import alerting, probes
from labkit.platform.mesh.resources import Mesh, Topology
from labkit.targets.base import AutoscalerStatus, ComponentStatus, Target, inside_media_root
from labkit.targets.kube import autoscaling, cluster, entry, image, manifest, monitoring, rollout, secrets, usage
from labkit.targets.kube import mesh as kube_mesh
from labkit.targets.kube import releases as kube_releases
from labkit.targets.kube.cluster import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NAMESPACES,
    NODES,
    PODS,
    PVCS,
    SECRETS,
    SERVICES,
    STATEFULSETS,
    Cluster,
    ResourceType,
)
from labkit.targets.kube.entry import Entry
from labkit.targets.kube.manifest import KubeObject
from labkit.targets.kube.portforward import PortForward, Stream

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from labkit.clients.sidecar import Handshake, Plaintext
    from labkit.platform.mesh.faults import ReplicaFault
    from labkit.platform.mesh.identity import WorkloadCertificate

# kubectl's own annotation for `kubectl rollout restart`, so kubectl shows ours the same way.
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
STOPPED_REPLICAS = "ottlab.io/stopped-replicas"
# stop_replica: the pod of a stopped replica carries this label, and its container this image until
# `start` recreates the pod from its template. The image of Kubernetes' pod sandbox (1.31 and later;
# a node has it already): a process that holds the container and serves nothing (Chaos Mesh's
# "pod-failure"). On a node that lacks it and cannot pull it, the container waits on the pull
# instead: its program does not run either, which is all stop_replica needs.
STOPPED_LABEL = "ottlab.io/stopped"
STOPPED_IMAGE_ANNOTATION = "ottlab.io/stopped-image"
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
# Alertmanager's configuration file in its ConfigMap (k8s/base/monitoring/alertmanager.yml).
ALERTMANAGER_CONFIG_KEY = monitoring.ALERTMANAGER_CONFIG
LAB_SELECTOR = f"{manifest.PART_OF_LABEL}={manifest.PART_OF}"
# Kinds that hold the lab's state: the database volume and the per-lab keys.
_STATE_KINDS = frozenset({"PersistentVolumeClaim", "Secret"})
# The kinds a component runs as: a Deployment, or (the edge, whose pods are PoPs of stable names) a StatefulSet.
_WORKLOAD_KINDS = {"Deployment": DEPLOYMENTS, "StatefulSet": STATEFULSETS}
# How long the public entry may take to answer once the gateway is ready (kube-proxy programs node ports in seconds).
ENTRY_TIMEOUT = 15.0
# A command run in a pod (KubeTarget._exec_in): writing a small file takes well under a second.
EXEC_TIMEOUT = 30.0
# What KubeTarget.write_media carries in an exec argument (base64 grows it by a third; ARG_MAX is far above).
EXEC_MAX_BYTES = 256 * 1024
# Run by the pod's python: write a file aside, then rename it over the old one; remove a file or folder.
_WRITE_MEDIA = ("import base64, os, sys; path = sys.argv[1]; os.makedirs(os.path.dirname(path), exist_ok=True); "
                "aside = path + '.tmp'; open(aside, 'wb').write(base64.b64decode(sys.argv[2])); "
                "os.replace(aside, path)")
_REMOVE_MEDIA = ("import os, shutil, sys; path = sys.argv[1]; "
                 "shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)")
# The port-forwards on the viewers' fixed ports this process holds, by local port (see KubeTarget._viewer_url).
_FIXED_FORWARDS: dict[int, PortForward] = {}
# What a pod's container waits with when its node has not got the image and cannot pull it.
IMAGE_PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"})
DATABASE_URL = "OTT_DATABASE_URL"


class KubeTarget(Target):
    """The platform on the cluster of ``$KUBECONFIG``, deployed from ``k8s/overlays/<overlay>``.

    ``api_client`` replaces the kubeconfig (tests pass one aimed at a fake API server); the
    target then neither probes nor closes it. ``overlay`` defaults to ``$OTTLAB_KUBE_OVERLAY``,
    else ``kind``; ``database`` to ``$OTTLAB_KUBE_DATABASE``, else ``sqlite`` (``postgres`` adds
    the component ``k8s/components/postgres``). Every wait is bounded by ``cfg.ready_timeout``, every API call by
    :data:`labkit.targets.kube.cluster.REQUEST_TIMEOUT`.
    """

    name = "kube"
    programs_needed_by = ("all", "kube")   # only kubectl, to render k8s/; the cluster runs the rest
    mesh_denial_names_policy = False       # Istio's RBAC filter answers "RBAC: access denied", nothing more

    def __init__(
        self,
        cfg: LabConfig,
        components: Sequence[Component],
        *,
        api_client: ApiClient | None = None,
        overlay: str | None = None,
        database: str | None = None,
    ) -> None:
        super().__init__(cfg, components)
        self.overlay = overlay or manifest.default_overlay()
        self.overlay_dir = manifest.overlay_dir(self.overlay)
        self.database = database or manifest.database()
        if self.database not in manifest.DATABASES:
            raise ConfigError(f"no database option {self.database!r}",
                              hint=f"choose one of: {', '.join(manifest.DATABASES)} ({manifest.DATABASE_ENV})")
        self._owns_client = api_client is None
        self._cluster = Cluster(cluster.load_api_client() if api_client is None else api_client)
        self._forwards: dict[tuple[str, str], PortForward] = {}
        self._rendered: list[KubeObject] | None = None
        self._topology: Topology | None = None
        self._releases: list[KubeObject] | None = None
        self._entry: Entry | None = None
        # The HPAs' decisions (status writes) this target has read: the cluster keeps only the last one.
        self._hpa_history = autoscaling.History()

    @property
    def namespace(self) -> str:
        """The lab's namespace (``OTTLAB_NAMESPACE``, default ``ottlab``)."""
        return self.cfg.namespace

    # -- the Target interface ------------------------------------------------------------

    def up(self, layers: Sequence[str] | None = None) -> list[ComponentStatus]:
        """Server-side apply the objects of ``layers`` (all when None) and wait for their rollouts.

        The per-lab Secrets of those layers are created first when missing (:mod:`labkit.targets.kube.secrets`).
        Two mistakes stop it early with what to do: services on SQLite (the default) on a cluster
        of several schedulable nodes, refused before anything is applied; and pods that cannot
        get the services image (never loaded into the cluster), reported as soon as they say so.
        """
        chosen = self.select(layers)
        # The HorizontalPodAutoscalers are not applied here: `autoscale(on=True)` does.
        objects = manifest.in_apply_order(manifest.without_autoscalers(
            manifest.of_layers(self._manifests(), layers or None)))
        # The alert rules and Alertmanager's waits of the lab's timing (fast under CI), as the local target runs them.
        objects = monitoring.with_alert_timing(objects, alerting.timing_from())
        # A workload an HPA of the lab scales keeps the replicas it runs (the HPA's), not k8s/'s.
        objects = self._keeping_autoscaled_replicas(objects)
        self._refuse_sqlite_on_several_nodes(objects)
        if any(o.get("kind") in kube_mesh.API_VERSIONS for o in objects):
            kube_mesh.require_istio(self._cluster, self.cfg.mesh)  # before anything is applied: the mesh needs Istio
        which = ", ".join(layers) if layers else "every layer"
        progress(f"applying {len(objects)} objects ({which}) to namespace {self.namespace} at {self._cluster.host}")
        wants_secrets = secrets.needed_by(objects)
        # Where viewers reach the lab, for the pods that write it into URLs (license, the transcoder):
        # the ConfigMap ott-public, applied after the Namespace; its hash on their pods rolls them when it changes.
        readers = entry.readers(objects)
        public = None
        if readers or entry.node_ports(objects):
            self._entry = entry.chosen(self._manifests(), self.cfg, self.components)
            # License's PoPs: those the applied edge runs (kept when its HPA scaled it), else those running now.
            applied_edge = next((o for o in objects if o.get("kind") == "StatefulSet"
                                 and manifest.name(o) == cdn.EDGE.name), None)
            pops = (int((applied_edge.get("spec") or {}).get("replicas") or self._declared_pops())
                    if applied_edge is not None else self._running_pops())
            public = entry.public_config(self._entry, pops)
            objects = [entry.stamped(o, entry.config_hash(public, entry.keys_read(o)))
                       if manifest.name(o) in readers and o.get("kind") == "Deployment" else o for o in objects]
        for obj in objects:
            self._cluster.apply(obj, namespace=self.namespace)
            progress(f"  applied {manifest.ref(obj)}")
            if public is not None and obj.get("kind") == "Namespace":
                self._cluster.apply(public, namespace=self.namespace)
                progress(f"  applied configmap/{entry.PUBLIC_CONFIG} ({self._describe_entry()})")
            # The Namespace comes first; the layers' pods mount their per-lab Secrets, made here
            # (when missing, never overwritten) so that they exist before those pods do.
            if wants_secrets and obj.get("kind") == "Namespace":
                made = secrets.ensure(self._cluster, self.namespace, secrets.layers_of(objects),
                                      referenced=secrets.referenced_by(objects))
                for created in made:
                    progress(f"  created secret/{created} (generated for this lab)")
        workloads = [manifest.name(obj) for obj in objects if obj.get("kind") in _WORKLOAD_KINDS]
        self._publish_probes(objects)
        for component in chosen:
            if _workload(component) not in workloads:
                progress(f"  note: {component.name} has no Deployment in k8s/overlays/{self.overlay}")
        rollout.wait_all(self._cluster, self.namespace, workloads, self.cfg.ready_timeout,
                         check=self._require_the_services_image, kinds=self._workload_kinds())
        if self.cfg.mesh != "off":
            self._require_sidecars(objects)
        if public is not None:
            self._check_entry(objects, readers)
        return [self._status_of(c, self._cluster.get(self._kind(c), _workload(c), self.namespace)) for c in chosen]

    def down(self, *, purge: bool = False) -> None:
        """Delete every object labkit applied (by its ``part-of: ottlab`` label) and wait for the pods.

        The database volume claim and the per-lab Secrets stay, as the local target keeps its
        lab directory; ``purge`` deletes them, and the namespace itself.
        """
        self._close_forwards()
        # Each kind once, dependents first: workloads before the ConfigMaps and accounts they use.
        applied = manifest.in_apply_order(o for o in self._manifests() if o.get("kind") != "Namespace")
        # No manifest holds the Secrets labkit generates (labkit.targets.kube.secrets): their kind first
        # here, so they are deleted last, after the pods that mount them.
        manifest_kinds = [(str(o.get("apiVersion")), str(o.get("kind"))) for o in applied]
        # A lab brought up with the mesh leaves its Istio resources and accounts whatever OTTLAB_MESH says now.
        manifest_kinds += [("v1", "ServiceAccount"), *((v, k) for k, v in kube_mesh.API_VERSIONS.items()),
                           (kube_mesh.ENVOY_FILTER_VERSION, "EnvoyFilter")]
        kinds = list(dict.fromkeys([(SECRETS.api_version, SECRETS.kind), *manifest_kinds]))
        namespace_exists = self._cluster.get(NAMESPACES, self.namespace) is not None
        progress(
            f"deleting the lab's objects (label {LAB_SELECTOR}) in namespace {self.namespace} at {self._cluster.host}"
        )
        for api_version, kind in reversed(kinds):
            try:
                rtype = self._cluster.resource_type(api_version, kind)
            except KubeError:
                continue  # the cluster does not even serve this kind: nothing of it to delete
            if rtype.namespaced and not namespace_exists:
                continue
            if rtype.kind in _STATE_KINDS and not purge:
                continue  # like the local target: data and keys outlive `down`, only purge removes them
            namespace = self.namespace if rtype.namespaced else None
            for obj in self._cluster.list(rtype, namespace, label_selector=LAB_SELECTOR):
                if self._cluster.delete(rtype, manifest.name(obj), namespace):
                    progress(f"  deleted {rtype.kind.lower()}/{manifest.name(obj)}")
        if namespace_exists:
            # A client pod of mesh_handshake/mesh_plaintext left by a process that stopped mid-probe.
            for probe in self._cluster.list(PODS, self.namespace, label_selector=LAB_SELECTOR):
                if manifest.labels(probe).get(manifest.NAME_LABEL) == kube_mesh.PROBE_NAME:
                    self._cluster.delete(PODS, manifest.name(probe), self.namespace, grace_period_seconds=0)
            until(
                lambda: not self._cluster.list(PODS, self.namespace, label_selector=LAB_SELECTOR),
                self.cfg.ready_timeout, rollout.POLL_INTERVAL,
                f"the lab's pods in namespace {self.namespace} to terminate",
            )
        if purge and namespace_exists:
            for claim in self._cluster.list(PVCS, self.namespace):
                if self._cluster.delete(PVCS, manifest.name(claim), self.namespace):
                    progress(f"  deleted persistentvolumeclaim/{manifest.name(claim)}")
            self._cluster.delete(NAMESPACES, self.namespace)
            progress(f"  deleted namespace/{self.namespace}")
            until(
                lambda: self._cluster.get(NAMESPACES, self.namespace) is None,
                self.cfg.ready_timeout, rollout.POLL_INTERVAL,
                f"namespace {self.namespace} to be deleted",
            )

    def status(self) -> list[ComponentStatus]:
        """One record per declared component, from its Deployment (``absent`` when there is none)."""
        found = {
            manifest.name(d): d
            for kind in (DEPLOYMENTS, STATEFULSETS)
            for d in self._cluster.list(kind, self.namespace, label_selector=LAB_SELECTOR)
        }
        return [self._status_of(c, found.get(_workload(c))) for c in self.components]

    def logs(self, component: str, lines: int = 100) -> str:
        """The last ``lines`` log lines of each of the component's pods."""
        comp = self.component(component)
        if lines < 1:
            raise ValueError(f"lines must be at least 1, got {lines}")
        pods = self._pods(comp)
        if not pods:
            raise NotRunningError(f"component {comp.name!r} (it has no pod in namespace {self.namespace})")
        chunks = []
        for pod in pods:
            pod_name = manifest.name(pod)
            containers = [str(c.get("name")) for c in pod.get("spec", {}).get("containers") or []]
            container = comp.name if comp.name in containers or not containers else containers[0]
            try:
                text = self._cluster.text(
                    PODS.path(self.namespace, pod_name, "log"), {"tailLines": str(lines), "container": container}
                )
            except KubeError as exc:
                # A pod still being created has no log yet; say so and show the others.
                text = f"(no log: {exc.message})\n"
            chunks.append(f"==> pod/{pod_name} <==\n{text}" if len(pods) > 1 else text)
        return "".join(chunks)

    def restart(self, component: str) -> ComponentStatus:
        """A rolling restart, as ``kubectl rollout restart`` does it; waits for the new pods."""
        comp = self._not_a_sidecar(self.component(component), "restart")
        stamp = datetime.now(UTC).isoformat(timespec="microseconds")
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        kind = self._kind(comp)
        patched = self._cluster.patch(kind, comp.name, self.namespace, patch,
                                      content_type=cluster.STRATEGIC_MERGE_PATCH)
        if patched is None:
            raise self._no_deployment(comp)
        progress(f"restarting {kind.kind.lower()}/{comp.name}")
        rollout.wait_all(self._cluster, self.namespace, [comp.name], self.cfg.ready_timeout,
                         kinds=self._workload_kinds())
        return self._status_of(comp, self._cluster.get(kind, comp.name, self.namespace))

    def scale(self, component: str, replicas: int) -> ComponentStatus:
        """Set the Deployment's replicas (1..``max_replicas``) through its scale subresource; wait."""
        comp = self._not_a_sidecar(self.component(component), "scale")
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= comp.max_replicas:
            raise ConfigError(
                f"{comp.name} can run 1 to {comp.max_replicas} replicas, not {replicas!r}",
                hint=f"choose a whole number from 1 to {comp.max_replicas} (max_replicas in its declaration)",
            )
        kind = self._kind(comp)
        scaled = {"spec": {"replicas": replicas}}
        if self._cluster.patch(kind, comp.name, self.namespace, scaled, subresource="scale") is None:
            raise self._no_deployment(comp)
        progress(f"scaling {kind.kind.lower()}/{comp.name} to {replicas} replica(s)")
        rollout.wait_all(self._cluster, self.namespace, [comp.name], self.cfg.ready_timeout,
                         kinds=self._workload_kinds())
        if comp.name == cdn.EDGE.name:
            # License signs a URL for each PoP: as the local target rewrites its edges file, this
            # rewrites ott-public's, and rolls license so that it reads it now (not at the kubelet's next sync).
            self._publish_entry(self._current_entry(), replicas)
            self._publish_probes(pops=replicas)
        return self._status_of(comp, self._cluster.get(kind, comp.name, self.namespace))

    def stop(self, component: str) -> ComponentStatus:
        """Scale the Deployment to 0, remembering its replicas in an annotation for :meth:`start`."""
        comp = self._not_a_sidecar(self.component(component), "stop")
        kind = self._kind(comp)
        current = self._cluster.get(kind, comp.name, self.namespace)
        if current is None:
            raise self._no_deployment(comp)
        replicas = int((current.get("spec") or {}).get("replicas") or 0)
        if replicas > 0:
            remember = {"metadata": {"annotations": {STOPPED_REPLICAS: str(replicas)}}}
            self._cluster.patch(kind, comp.name, self.namespace, remember, content_type=cluster.STRATEGIC_MERGE_PATCH)
        self._cluster.patch(kind, comp.name, self.namespace, {"spec": {"replicas": 0}}, subresource="scale")
        progress(f"stopped {kind.kind.lower()}/{comp.name} "
                 f"(0 replicas; `start` brings back {replicas or comp.replicas})")
        return self._status_of(comp, self._cluster.get(kind, comp.name, self.namespace))

    def start(self, component: str) -> ComponentStatus:
        """Start a stopped component: its stopped replicas' pods recreated from the template, and a
        workload scaled to 0 back to the replicas it had (its declared count if unknown); wait."""
        comp = self._not_a_sidecar(self.component(component), "start")
        current = self._cluster.get(self._kind(comp), comp.name, self.namespace)
        if current is None:
            raise self._no_deployment(comp)
        # A replica stopped alone (stop_replica): its pod is deleted, and its controller makes it again as declared.
        stopped = self._cluster.list(PODS, self.namespace,
                                     label_selector=f"{manifest.NAME_LABEL}={comp.name},{STOPPED_LABEL}=true")
        for pod in stopped:
            self._cluster.delete(PODS, manifest.name(pod), self.namespace)
            progress(f"recreating pod/{manifest.name(pod)} of {comp.name} from its template")
        if stopped:
            until(lambda: not [p for p in self._cluster.list(PODS, self.namespace,
                                                             label_selector=f"{manifest.NAME_LABEL}={comp.name}")
                               if (p.get("metadata", {}).get("labels") or {}).get(STOPPED_LABEL)],
                  self.cfg.ready_timeout, rollout.POLL_INTERVAL, f"the stopped pods of {comp.name} to be replaced")
        annotations = (current.get("metadata") or {}).get("annotations") or {}
        running = int((current.get("spec") or {}).get("replicas") or 0)
        try:
            replicas = running or max(1, int(annotations.get(STOPPED_REPLICAS, comp.replicas)))
        except ValueError:
            replicas = comp.replicas
        return self.scale(comp.name, min(replicas, comp.max_replicas))

    def stop_replica(self, component: str, replica: int) -> ComponentStatus:
        """Stop one replica (``edge``, 1: the PoP edge-1) until :meth:`start`: its pod stays, its program does not run.

        What a chaos tool does for "a pod down, not replaced" (Chaos Mesh's pod-failure): the pod's
        container of the component gets the pause image (a pod's one mutable field). The kubelet
        stops the program and runs a process that serves nothing, so the pod turns unready and
        leaves its Service (a PoP's own Service has no endpoint), its controller does not replace
        it (the pod still exists), and the sidecars keep reporting: the nginx exporter says
        ``nginx_up 0``, as for a local PoP whose nginx stopped. Deleting the pod would not do: the
        StatefulSet makes it again at once. :meth:`start` deletes the pod and its controller
        recreates it from the template. Replica ``n`` of the edge StatefulSet is pod ``edge-n``;
        of a Deployment, the ``n``-th of its pods by name.
        """
        comp = self._not_a_sidecar(self.component(component), "stop a replica of")
        kind = self._kind(comp)
        current = self._cluster.get(kind, comp.name, self.namespace)
        if current is None:
            raise self._no_deployment(comp)
        replicas = int((current.get("spec") or {}).get("replicas") or 0)
        if not replicas:
            raise ConfigError(f"{comp.name} runs no replica to stop",
                              hint=f"start it first: target.start({comp.name!r})")
        if isinstance(replica, bool) or not isinstance(replica, int) or not 0 <= replica < replicas:
            raise ConfigError(f"{comp.name} runs replicas 0 to {replicas - 1}, not {replica!r}",
                              hint=f"choose a replica from 0 to {replicas - 1}")
        if kind is STATEFULSETS:
            pod_name = f"{comp.name}-{replica}"
        else:
            pods = [manifest.name(p) for p in self._pods(comp) if not p.get("metadata", {}).get("deletionTimestamp")]
            if replica >= len(pods):
                raise NotRunningError(f"replica {replica} of {comp.name!r} (it has {len(pods)} pod(s))")
            pod_name = pods[replica]
        pod = self._cluster.get(PODS, pod_name, self.namespace)
        if pod is None:
            raise NotRunningError(
                f"replica {replica} of {comp.name!r} (no pod/{pod_name} in namespace {self.namespace})")
        containers = {str(c.get("name")): str(c.get("image")) for c in (pod.get("spec") or {}).get("containers") or []}
        if comp.name not in containers:
            raise KubeError(f"pod/{pod_name} has no container {comp.name} to stop",
                            hint=f"kubectl -n {self.namespace} describe pod {pod_name}")
        if containers[comp.name] != PAUSE_IMAGE:
            failed = {"metadata": {"labels": {STOPPED_LABEL: "true"},
                                   "annotations": {STOPPED_IMAGE_ANNOTATION: containers[comp.name]}},
                      "spec": {"containers": [{"name": comp.name, "image": PAUSE_IMAGE}]}}
            self._cluster.patch(PODS, pod_name, self.namespace, failed, content_type=cluster.STRATEGIC_MERGE_PATCH)
        progress(f"stopped {comp.name} in pod/{pod_name} (its container runs {PAUSE_IMAGE}; "
                 f"`start({comp.name!r})` recreates the pod)")
        until(lambda: not _ready(self._cluster.get(PODS, pod_name, self.namespace) or {}),
              self.cfg.ready_timeout, rollout.POLL_INTERVAL, f"pod/{pod_name} to stop serving (unready)")
        return self._status_of(comp, self._cluster.get(kind, comp.name, self.namespace))

    def route_alerts(self, webhook: str | None) -> None:
        """Point Alertmanager's receivers at ``webhook`` (None: as declared): its ConfigMap patched, then reloaded.

        What an operator does by hand (``kubectl edit configmap``, then ``POST /-/reload``): the
        kubelet updates the mounted file within its sync period (about a minute), so Alertmanager
        is asked to reload until its ``/api/v2/status`` shows the new configuration. ``webhook`` is
        posted to from Alertmanager's pod: a loopback address of this machine is refused (see
        :data:`labkit.clients.alerts` ``OTTLAB_WEBHOOK_HOST`` for a receiver pods reach).
        """
        import httpx
        import yaml

        from labkit.clients import alerts

        if webhook is not None:
            host = httpx.URL(webhook).host
            if host in ("localhost", "::1") or host.startswith("127."):
                raise MissingCapabilityError(
                    self.name, f"point Alertmanager at {webhook}",
                    "Alertmanager runs in a pod, where a loopback address is the pod itself",
                    hint=f"make the receiver listen where the cluster's pods reach this machine: set "
                         f"{alerts.WEBHOOK_HOST_ENV} to such an address of it before making the WebhookReceiver "
                         "(kind on Linux: the gateway of the docker network kind, docker network inspect kind)")
        deployment = self._cluster.get(DEPLOYMENTS, "alertmanager", self.namespace)
        if deployment is None:
            raise NotRunningError(
                f"component 'alertmanager' (no deployment/alertmanager in namespace {self.namespace})")
        volumes = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("volumes") or []
        names = [str(v["configMap"]["name"]) for v in volumes if (v.get("configMap") or {}).get("name")]
        if len(names) != 1:
            raise KubeError(f"deployment/alertmanager mounts {len(names)} ConfigMaps, not its one configuration",
                            hint="apply the monitoring layer again: ottlab up --target kube")
        # The configuration `up` gave Alertmanager (the lab's timing: labkit.targets.kube.monitoring), and the receiver.
        text = alerting.dump(alerting.alertmanager_config(alerting.timing_from(), webhook=webhook))
        self._cluster.patch(CONFIGMAPS, names[0], self.namespace, {"data": {ALERTMANAGER_CONFIG_KEY: text}})
        progress(f"patched configmap/{names[0]}: Alertmanager's receivers "
                 f"{'post to ' + webhook if webhook else 'as declared'}")
        url = self.endpoint("alertmanager")
        wanted = yaml.safe_load(text)

        def loaded() -> bool:
            alerts.reload(url)
            return bool(yaml.safe_load(_alertmanager_config(url)) == wanted)

        until(loaded, self.cfg.ready_timeout, 5.0, "Alertmanager to load its patched configuration "
              "(the kubelet updates a mounted ConfigMap within about a minute)")

    def kill(self, component: str) -> None:
        """Delete one of the component's pods at once (grace period 0); its Deployment replaces it."""
        comp = self.component(component)
        pods = [p for p in self._pods(comp) if not p.get("metadata", {}).get("deletionTimestamp")]
        if not pods:
            raise NotRunningError(f"component {comp.name!r} (it has no live pod in namespace {self.namespace})")
        victim = manifest.name(pods[0])
        self._cluster.delete(PODS, victim, self.namespace, grace_period_seconds=0)
        progress(f"killed pod/{victim} of {comp.name} (grace period 0)")

    def service_token(self) -> str:
        """The lab's service token, from the Secret ``labkit.targets.kube.secrets`` created at ``up``."""
        import base64

        found = self._cluster.get(SECRETS, secrets.SERVICE_TOKEN, self.namespace)
        if found is None:
            raise NotRunningError(f"the apis layer in namespace {self.namespace} (no Secret {secrets.SERVICE_TOKEN})")
        return base64.b64decode(found["data"][secrets.SERVICE_TOKEN_KEY]).decode().strip()

    # -- capabilities ----------------------------------------------------------------------

    def autoscale(self, on: bool, *, scale_down_window: float | None = None,
                  metric_targets: Mapping[str, float] | None = None) -> list[AutoscalerStatus]:
        """Apply (or delete) the rendered HorizontalPodAutoscalers; the cluster's HPA controller acts on them.

        Checked first, before anything is applied (:func:`labkit.targets.kube.autoscaling.checked`).
        The custom metrics need prometheus-adapter and CPU needs metrics-server (``ottlab addons install``).
        """
        rendered = self._manifests()
        objects = autoscaling.checked(rendered, self.components, scale_down_window=scale_down_window,
                                      metric_targets=metric_targets)
        if on:
            progress(f"applying {len(objects)} HorizontalPodAutoscalers to namespace {self.namespace}")
            autoscaling.apply(self._cluster, self.namespace, objects)
        else:
            self.follow_autoscaler()  # the PoPs the edge's HPA left, listed before it goes
            autoscaling.delete(self._cluster, self.namespace, objects)
        return autoscaling.status(self._cluster, self.namespace, rendered, self._hpa_history)

    def autoscale_status(self) -> list[AutoscalerStatus]:
        """Each HPA's live status: current metrics, current and desired replicas, and its decisions.

        A decision is a status the cluster's controller wrote at a sync (:mod:`.autoscaling`): those
        this target has read since it was made, ``last`` the time the API server stamped on the write.
        A read only: what follows the edge's count is :meth:`follow_autoscaler`'s.
        """
        return autoscaling.status(self._cluster, self.namespace, self._manifests(), self._hpa_history)

    def follow_autoscaler(self) -> None:
        """License's PoP list (ott-public) brought to the edge's replicas once its HPA set a count the list lacks.

        Locally the autoscaler scales through :meth:`scale`, which rewrites the list; on kube the
        cluster's HPA scales the StatefulSet itself, so this explicit step (a ramp's settle between
        steps, :func:`labkit.traffic.capacity.autoscaler_synced`; :meth:`autoscale` off) brings the
        list along: once the edge's rollout is complete (its new PoPs ready), as :meth:`scale` does
        it (license rolled and awaited, the probes' targets rewritten). Nothing without an edge HPA.
        """
        rows = autoscaling.status(self._cluster, self.namespace, self._manifests(), self._hpa_history)
        if any(row.active and row.target == cdn.EDGE.name for row in rows):
            self._follow_the_edge()

    def _follow_the_edge(self) -> None:
        """License's list and the probes' targets to the edge's replica count, once its rollout is complete."""
        import json

        edge = self._cluster.get(STATEFULSETS, cdn.EDGE.name, self.namespace)
        public = self._cluster.get(CONFIGMAPS, entry.PUBLIC_CONFIG, self.namespace)
        if edge is None or public is None:
            return
        status = rollout.RolloutStatus.of(edge)
        listed = len(json.loads(str((public.get("data") or {}).get(entry.EDGES_KEY) or "{}")))
        if status.desired < 1 or not status.complete or status.desired == listed:
            return
        progress(f"the edge runs {status.desired} PoP(s) (its HPA scaled it), license's list has {listed}: "
                 "publishing them")
        self._publish_entry(self._current_entry(), status.desired)
        self._publish_probes(pops=status.desired)

    def set_pop_capacity(self, rps: int | None) -> int | None:
        """The edge StatefulSet's container ``edge`` gets :data:`cdn.CAPACITY_SETTING` (None: it is removed); wait.

        A strategic merge patch of the pod template's environment, as ``kubectl set env`` makes: the
        StatefulSet rolls its PoPs, and each pod's start script (:func:`cdn.render_kube_start`) writes
        the same limit_req lines the local target renders before nginx starts; a PoP an HPA adds later
        starts from the same template. The setting belongs to this patch's field manager, so ``up``
        (server-side apply of k8s/, which does not name it) leaves it. Bounded by ``cfg.ready_timeout``.
        """
        capacity = cdn.capacity_value(rps)
        comp = self.component(cdn.EDGE.name)
        kind = self._kind(comp)
        setting: dict[str, str] = ({"name": cdn.CAPACITY_SETTING, "value": str(capacity)} if capacity is not None
                                   else {"name": cdn.CAPACITY_SETTING, "$patch": "delete"})
        patch = {"spec": {"template": {"spec": {"containers": [{"name": comp.name, "env": [setting]}]}}}}
        if self._cluster.patch(kind, comp.name, self.namespace, patch,
                               content_type=cluster.STRATEGIC_MERGE_PATCH) is None:
            raise self._no_deployment(comp)
        progress(f"set {cdn.CAPACITY_SETTING}={capacity if capacity is not None else '(unset)'} on "
                 f"{kind.kind.lower()}/{comp.name}: its PoPs roll with it")
        rollout.wait_all(self._cluster, self.namespace, [comp.name], self.cfg.ready_timeout,
                         kinds=self._workload_kinds())
        return _pop_capacity(self._cluster.get(kind, comp.name, self.namespace) or {})

    def cpu_meter(self) -> Callable[[], dict[str, float]]:
        """CPU seconds per component from the kubelets' cAdvisor, through the lab's Prometheus (:mod:`.usage`).

        Waits (bounded) until Prometheus has the lab's containers' series: a Prometheus just up
        has not scraped the kubelets yet, and one that never does lacks its ClusterRole or cannot
        reach them.
        """
        from labkit.clients.prometheus import Prometheus

        prometheus = Prometheus(self.endpoint("prometheus"))

        def pods() -> dict[str, dict[str, str]]:
            return {manifest.name(p): dict(p["metadata"].get("labels") or {})
                    for p in self._cluster.list(PODS, self.namespace, label_selector=LAB_SELECTOR)}

        meter = usage.cpu_meter(prometheus, self.namespace, self.components, pods)
        until(meter, usage.SERIES_TIMEOUT, 1.0,
              f"Prometheus at {prometheus.url} to have {usage.CPU} of the lab's containers (job {usage.JOB})",
              hint=f"look at job {usage.JOB} in Prometheus' targets (prometheus.targets()): a 403 is the "
                   f"ClusterRole {usage.CLUSTER_ROLE} missing (ottlab up applies it); no target, no node listed")
        return meter

    def scrape_jobs(self, layers: Sequence[str] | None = None) -> list[str]:
        """The jobs the lab's Prometheus makes of what ``up(layers)`` applies (:func:`.monitoring.scrape_jobs`):
        the declared ones, and with the mesh the job of the sidecars Istio injects into the meshed workloads."""
        return monitoring.scrape_jobs(self._manifests(), layers)

    def mesh(self) -> Mesh:
        """The Istio resources of the lab's namespace as they are now (:func:`labkit.targets.kube.mesh.read`)."""
        return kube_mesh.read(self._cluster, self.namespace)

    def apply_mesh(self, mesh: Mesh) -> None:
        """Apply what differs from the cluster's mesh, checked first against the lab's manifests; Istio enforces it.

        A fault is one server-side apply of its service's own VirtualService (why not a VirtualService
        of its own: :mod:`labkit.targets.kube.mesh`). A mesh with a problem sends nothing.
        """
        progress(f"applying the mesh's resources to namespace {self.namespace}")
        kube_mesh.apply(self._cluster, self.namespace, mesh, self._mesh_topology())

    def mesh_address(self, service: str) -> tuple[str, int]:
        """Refused, saying why and what instead: nothing on this machine reaches a pod's port through its sidecar.

        A pod's port takes its sidecar's mutual TLS from the cluster's network only. A port-forward
        enters the pod at its loopback, which Istio's redirection leaves alone: a client there would
        reach the service around its sidecar (a plaintext client let in under STRICT), a false lesson.
        """
        comp = self.component(service)
        port = comp.port("http").container if any(p.name == "http" for p in comp.ports) else 8000
        raise MissingCapabilityError(
            self.name, f"reach {comp.name}'s port through its sidecar from this machine",
            "a pod's port takes mutual TLS from the cluster's network only; a port-forward enters the pod at its "
            "loopback, where Istio does not intercept, so a client there would reach the service around its sidecar",
            hint=f"probe it from a pod without a sidecar, as Istio's mutual TLS migration task does: kubectl -n "
                 f"{self.namespace} run mtls-probe --rm -i --restart=Never --image=curlimages/curl "
                 f"--labels=sidecar.istio.io/inject=false -- curl -sS -m 5 http://{comp.name}:{port}/ (under STRICT "
                 f"the connection is reset, curl exit 56); its sidecar counts it: "
                 f"labkit.clients.sidecar.Sidecar(target.mesh_sidecar({comp.name!r})).listener_tls()")

    def mesh_sidecar(self, service: str, replica: int = 0) -> str:
        """The Envoy admin API of the istio-proxy in ``service``'s ``replica``-th ready pod (by name): a port-forward.

        Istio binds it to the pod's loopback (:data:`labkit.targets.kube.mesh.ADMIN_PORT`), so the
        forward goes into that pod, as ``istioctl dashboard envoy`` does; kept open and reused.
        ``gateway`` is the gateway pod's own sidecar, through which it calls the services. A pod
        without the sidecar (the lab up without the mesh, or Istio not injecting) is a :class:`KubeError`.
        """
        pod = self._meshed_pod(self._not_a_sidecar(self.component(service), "read the mesh sidecar of"), replica)
        key = (f"{kube_mesh.PROXY_CONTAINER}/{pod}", "admin")
        forward = self._forwards.get(key)
        if forward is None or not forward.alive:
            forward = PortForward(functools.partial(self._pod_tunnel, pod, kube_mesh.ADMIN_PORT),
                                  name=f"{pod}:{kube_mesh.ADMIN_PORT}")
            self._forwards[key] = forward
            progress(f"port-forward {forward.url} -> pod/{pod} port {kube_mesh.ADMIN_PORT} "
                     f"(its {kube_mesh.PROXY_CONTAINER}'s Envoy admin API)")
        return forward.url

    def _meshed_pod(self, comp: Component, replica: int) -> str:
        """The name of ``comp``'s ``replica``-th ready pod (by name), which must run Istio's sidecar."""
        pods = [p for p in self._pods(comp) if _ready(p)]
        if not pods:
            raise NotRunningError(f"component {comp.name!r} (no ready pod in namespace {self.namespace})")
        if isinstance(replica, bool) or not isinstance(replica, int) or not 0 <= replica < len(pods):
            raise ConfigError(f"{comp.name} has {len(pods)} ready pod(s), not a replica {replica!r}",
                              hint=f"choose a replica from 0 to {len(pods) - 1}")
        pod = manifest.name(pods[replica])
        if not kube_mesh.has_sidecar(pods[replica]):
            raise KubeError(
                f"pod/{pod} has no {kube_mesh.PROXY_CONTAINER} container: {comp.name} runs outside the mesh",
                hint="bring the lab up with the mesh (Istio installed: ottlab addons install istio-base istiod; then "
                     "OTTLAB_MESH=strict ottlab up --target kube); a pod made before Istio was gets its sidecar "
                     f"when restarted: ottlab restart {comp.name} --target kube")
        return pod

    def inject_replica_fault(self, fault: ReplicaFault) -> None:
        """``fault`` in one pod's own sidecar: an EnvoyFilter selecting that pod (:func:`.mesh.replica_fault_filter`).

        The pod (the replica-th ready one by name, as :meth:`mesh_sidecar` reads it) gets the label
        the filter selects; a fault already on that replica is replaced. Nothing restarts: istiod
        pushes the filter to that sidecar alone. A pod replaced meanwhile (killed, rolled) is rid of it.
        """
        comp = self._not_a_sidecar(self.component(fault.fault.service), "give a replica fault to")
        pod = self._meshed_pod(comp, fault.replica)
        kube_mesh.envoy_filters(self._cluster)   # Istio serves the kind, before anything is changed
        self._cluster.patch(PODS, pod, self.namespace, {"metadata": {"labels": {kube_mesh.REPLICA_FAULT_LABEL: pod}}})
        self._cluster.apply(kube_mesh.replica_fault_filter(fault, pod), namespace=self.namespace)
        progress(f"applied envoyfilter/ottlab-replica-fault-{comp.name}-{fault.replica}: {fault.describe()} "
                 f"(pod/{pod}'s sidecar)")

    def replica_faults(self) -> list[ReplicaFault]:
        """The faults of single replicas in force: the EnvoyFilters :meth:`inject_replica_fault` applied."""
        try:
            rtype = kube_mesh.envoy_filters(self._cluster)
        except KubeError:
            return []   # no Istio: no fault of a replica can be in force
        found = [kube_mesh.replica_fault_of(o) for o in self._cluster.list(rtype, self.namespace,
                                                                           label_selector=LAB_SELECTOR)]
        return sorted((f for f in found if f is not None), key=lambda f: (f.fault.service, f.replica))

    def clear_replica_faults(self, service: str | None = None) -> list[ReplicaFault]:
        """Delete the EnvoyFilters of single replicas' faults (of ``service`` only, when given); the faults removed."""
        try:
            rtype = kube_mesh.envoy_filters(self._cluster)
        except KubeError:
            return []
        removed = []
        for obj in self._cluster.list(rtype, self.namespace, label_selector=LAB_SELECTOR):
            fault = kube_mesh.replica_fault_of(obj)
            if fault is not None and service in (None, fault.fault.service):
                self._cluster.delete(rtype, manifest.name(obj), self.namespace)
                selected = ((obj.get("spec") or {}).get("workloadSelector") or {}).get("labels") or {}
                if selected.get(kube_mesh.REPLICA_FAULT_LABEL):   # the pod's label goes too (a gone pod: nothing)
                    self._cluster.patch(PODS, selected[kube_mesh.REPLICA_FAULT_LABEL], self.namespace,
                                        {"metadata": {"labels": {kube_mesh.REPLICA_FAULT_LABEL: None}}})
                progress(f"deleted envoyfilter/{manifest.name(obj)}: {fault.describe()}")
                removed.append(fault)
        return removed

    def mesh_handshake(self, service: str, certificate: WorkloadCertificate | None = None, *,
                       path: str = "/") -> Handshake:
        """A TLS client outside the mesh at ``service``'s Service port, from inside the cluster.

        It runs in a pod of the lab's services image without a sidecar (:func:`kube_mesh.probe_pod`),
        so its connection enters the service's pod from the cluster's network, where the sidecar
        intercepts it, as a legacy client's does in Istio's mutual TLS migration task; the pod's
        log gives what it saw, and the pod is deleted.
        """
        from labkit.clients.sidecar import Handshake, spiffe_uri

        chain = certificate.chain.read_text() if certificate is not None else None
        key = certificate.key.read_text() if certificate is not None else None
        seen = self._mesh_probe(service, "GET", path, tls=True, chain=chain, key=key)
        der = base64.b64decode(seen["peer_der"]) if seen.get("peer_der") else None
        return Handshake(spiffe_uri(der), seen.get("status"), seen.get("refused"))

    def mesh_plaintext(self, service: str, method: str = "GET", path: str = "/") -> Plaintext:
        """A plaintext HTTP client outside the mesh at ``service``'s Service port: from a pod, as above."""
        from labkit.clients.sidecar import Plaintext

        seen = self._mesh_probe(service, method, path, tls=False)
        return Plaintext(seen.get("status"), str(seen.get("body") or ""), seen.get("refused"))

    def _mesh_probe(self, service: str, method: str, path: str, *, tls: bool, chain: str | None = None,
                    key: str | None = None) -> dict[str, Any]:
        """Run :data:`kube_mesh.PROBE_SCRIPT` once in a pod outside the mesh against ``service``; what it printed."""
        import json
        import uuid

        comp = self._not_a_sidecar(self.component(service), "probe")
        port = comp.port("http").container
        name = f"{kube_mesh.PROBE_NAME}-{uuid.uuid4().hex[:8]}"
        pod = kube_mesh.probe_pod(name, image.services_image(), f"{comp.name}.{self.namespace}.svc", port,
                                  method, path, chain=chain, key=key, tls=tls)
        progress(f"pod/{name}, outside the mesh: {'TLS' if tls else 'plaintext'} {method} {path} "
                 f"at {comp.name}:{port}{' with a client certificate' if chain else ''}")
        self._cluster.create(PODS, pod, self.namespace)
        try:
            def finished() -> bool:
                current = self._cluster.get(PODS, name, self.namespace) or {}
                status = current.get("status") or {}
                for container in status.get("containerStatuses") or []:
                    reason = ((container.get("state") or {}).get("waiting") or {}).get("reason")
                    if reason in IMAGE_PULL_FAILURES:
                        raise ImageMissingError(image.services_image(), [f"pod/{name} is {reason}"])
                return status.get("phase") in ("Succeeded", "Failed")

            until(finished, kube_mesh.PROBE_TIMEOUT, 0.5, f"pod/{name} (a client outside the mesh) to finish")
            text = self._cluster.text(PODS.path(self.namespace, name, "log"), {"container": "probe"})
        finally:
            self._cluster.delete(PODS, name, self.namespace, grace_period_seconds=0)
        lines = [line for line in text.splitlines() if line.startswith("{")]
        try:
            seen: dict[str, Any] = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise KubeError(f"pod/{name} printed no result: {text.strip()[-500:] or '(nothing)'}",
                            hint="its image is the services image: is it the one the lab runs? "
                                 "(make image && ottlab image load)") from None
        return seen

    def _mesh_topology(self, without: str | None = None) -> Topology:
        """What the mesh may name: the Services, workloads and accounts the manifests declare with the mesh.

        With the second releases the cluster runs now (:meth:`start_version`), but ``without``.
        """
        if self._topology is None:
            objects = manifest.render(self.overlay_dir, components=(*manifest.DATABASES[self.database], "mesh"))
            self._topology = dataclasses.replace(Topology.of(objects), namespace=self.namespace)
        running = [o for o in kube_releases.running(self._cluster, self.namespace, self._release_objects())
                   if manifest.name(o) != without]
        return dataclasses.replace(self._topology, workloads=[*self._topology.workloads,
                                                              *Topology.of(running).workloads])

    def start_version(self, service: str, version: str) -> ComponentStatus:
        """Apply ``<service>-<version>`` of ``k8s/components/canary`` (catalog-v2) and wait for its rollout."""
        obj = kube_releases.deployment(self._release_objects(), service, version)
        self._require_mesh_for(manifest.name(obj))
        progress(f"starting {manifest.name(obj)} in namespace {self.namespace}")
        live = kube_releases.start(self._cluster, self.namespace, obj, self.cfg.ready_timeout)
        return self._status_of(dataclasses.replace(self.component(service), name=manifest.name(obj)), live)

    def stop_version(self, service: str, version: str) -> None:
        """Delete that Deployment, refused first (nothing sent) while the mesh in force routes requests to it."""
        obj = kube_releases.deployment(self._release_objects(), service, version)
        self._require_mesh_for(manifest.name(obj))
        kube_releases.stop(self._cluster, self.namespace, obj, self.mesh(), self._mesh_topology(manifest.name(obj)))

    def _release_objects(self) -> list[KubeObject]:
        """The second releases' Deployments, rendered before the lab's database component (its patches reach them)."""
        if self._releases is None:
            objects = manifest.render(self.overlay_dir, components=(kube_releases.COMPONENT,
                                                                    *manifest.DATABASES[self.database], "mesh"))
            self._releases = kube_releases.deployments(objects)
        return self._releases

    def _require_mesh_for(self, release: str) -> None:
        if self.cfg.mesh == "off":
            raise ConfigError(f"{release} is routed by the mesh (its DestinationRule's subset), and this lab runs "
                              "without it", hint="bring the lab up with OTTLAB_MESH=strict first")

    def cpu_shares(self) -> dict[str, float]:
        """One core per running replica, or its container's CPU limit when lower (the edge's 500m): a pod's ceiling."""
        limits = usage.cpu_limits(self._manifests())
        return {s.name: s.replicas * min(1.0, limits.get(s.name, 1.0)) for s in self.status() if s.replicas}

    def describe(self) -> str:
        return f"kube target: namespace {self.namespace} at {self._cluster.host}"

    def signing_secret(self) -> str:
        """The lab's URL-signing secret, from the Secret ``labkit.targets.kube.secrets`` created at ``up``."""
        import base64

        found = self._cluster.get(SECRETS, secrets.URL_SIGNING, self.namespace)
        if found is None:
            raise NotRunningError(f"the cdn layer in namespace {self.namespace} (no Secret {secrets.URL_SIGNING})")
        return base64.b64decode(found["data"][secrets.URL_SIGNING_SECRET_KEY]).decode().strip()

    def media_root(self) -> Path:
        raise MissingCapabilityError(
            self.name, "reach the origin's media root from this machine",
            f"it is the volume claim the transcoder and origin pods mount in namespace {self.namespace}",
            hint="read a published version with target.media_folder(title, version) (a copy from the origin), "
                 "or run this on the local target")

    def media_folder(self, title: str, version: str) -> Path:
        """A copy on this machine of a published version, fetched from the origin (:mod:`labkit.targets.kube.mirror`).

        Under ``<lab>/data/kube-media/<namespace>``; a version never changes once published, so a
        complete copy is reused.
        """
        from labkit.targets.kube.mirror import mirror_version

        return mirror_version(self.endpoint(entry.ORIGIN), title, version,
                              into=self.cfg.data_dir / "kube-media" / self.namespace)

    def write_media(self, relative: str, content: bytes) -> None:
        """Publish a file in the media volume: written aside and renamed, by ``python`` in a transcoder pod.

        The transcoder's pods mount the media claim read-write (the origin's read-only), so the file
        is written there through the API's exec (``kubectl exec``): the content travels as an
        argument (base64; meant for small files such as a live playlist, up to :data:`EXEC_MAX_BYTES`).
        """
        if len(content) > EXEC_MAX_BYTES:
            raise ConfigError(f"{relative}: {len(content)} bytes is more than the {EXEC_MAX_BYTES} an exec argument "
                              "carries", hint="publish media through the transcoder (labkit.transcoding.transcode)")
        path = f"{origin.KUBE_MEDIA_ROOT}/{inside_media_root(relative)}"
        self._exec_in(self.component(media.TRANSCODER.name),
                      ["python", "-c", _WRITE_MEDIA, path, base64.b64encode(content).decode()])

    def remove_media(self, relative: str) -> None:
        """Delete a file or folder of the media volume, by ``python`` in a transcoder pod; nothing when absent."""
        path = f"{origin.KUBE_MEDIA_ROOT}/{inside_media_root(relative)}"
        self._exec_in(self.component(media.TRANSCODER.name), ["python", "-c", _REMOVE_MEDIA, path])

    def access_log(self, pop: str) -> list[dict[str, Any]]:
        """PoP ``edge-<n>``'s requests, from its pod's log: its exporter echoes each access log line it reads there.

        nginx writes the JSON access log into a file of the pod, which the exporter sidecar
        (``python -m ott.edgelog --echo``) reads and writes to its stdout, the pod log the API serves
        (``kubectl logs edge-0 -c edge-exporter``). The exporter's own log lines are JSON too: only
        access log objects are kept (they carry the PoP and the request's ``msec``). ``[]`` when the
        PoP's pod does not exist (a PoP not running, as a local PoP without its log file).
        """
        from labkit.traffic.herd import parse_log_lines

        known = entry.pop_services(cdn.EDGE.max_replicas)
        if pop not in known:
            raise ConfigError(f"no PoP named {pop!r}",
                              hint=f"a PoP is {known[0]} to {known[-1]}; "
                                   "labkit.pops.pop_urls(target) names the running ones")
        text = self._cluster.request("GET", PODS.path(self.namespace, pop, "log"),
                                     query={"container": cdn.EXPORTER.name}, as_text=True, allow_missing=True)
        if text is None:
            return []
        return [record for record in parse_log_lines(str(text).splitlines())
                if "msec" in record and record.get("pop") == pop]

    def endpoint(self, component: str, port: str = "http") -> str:
        """A URL of this machine for the component's Service.

        The gateway and the origin, whose URLs viewers get, answer at the lab's public entry
        (:mod:`labkit.targets.kube.entry`): their node port, or a port-forward from the local
        target's port of the same component. Any other is ``http://127.0.0.1:<free port>``, a
        port-forward to its Service (kept open, reused).
        """
        comp = self.component(component)
        if port == "http" and comp.name in (entry.GATEWAY, entry.ORIGIN):
            return self._viewer_url(comp.name)
        if comp.follows is not None:
            raise ConfigError(f"{comp.name} has no Service: it is a sidecar in each {comp.follows} pod",
                              hint="Prometheus scrapes it in every pod: query its metrics with labkit.Prometheus")
        try:
            comp.port(port)
        except KeyError:
            raise ConfigError(
                f"{comp.name} has no port named {port!r}",
                hint=f"its ports: {', '.join(p.name for p in comp.ports)}",
            ) from None
        forward = self._forwards.get((comp.name, port))
        if forward is not None and forward.alive:
            return forward.url
        self._backend(comp, port)  # fail now, with a clear reason, rather than on the first request
        forward = PortForward(functools.partial(self._tunnel, comp, port), name=f"{comp.name}:{port}")
        self._forwards[(comp.name, port)] = forward
        progress(f"port-forward {forward.url} -> service/{comp.name} port {port} in namespace {self.namespace}")
        return forward.url

    def close(self) -> None:
        """Stop the port-forwards and release the API client; the platform keeps running."""
        self._close_forwards()
        if self._owns_client:
            self._cluster.api_client.close()  # type: ignore[no-untyped-call]

    # -- helpers -------------------------------------------------------------------------

    def _keeping_autoscaled_replicas(self, objects: Sequence[KubeObject]) -> list[KubeObject]:
        """``objects``, each workload a HorizontalPodAutoscaler on the cluster scales given the replicas it runs now.

        Re-applying k8s/'s ``replicas`` would undo the HPA's scaling until its next sync (a rolled PoP
        fleet, dropped caches). Leaving the field out of the apply is no better: the server-side apply
        then drops labkit's ownership of it and, while labkit is its only owner (an HPA that never changed
        the count), resets it to the default, 1. Applying the live count changes nothing, and the HPA stays
        the only one that moves it (Kubernetes' advice: leave ``spec.replicas`` to the HPA).
        """
        scaled = {(str((h.get("spec") or {}).get("scaleTargetRef", {}).get("kind")),
                   str((h.get("spec") or {}).get("scaleTargetRef", {}).get("name"))): manifest.name(h)
                  for h in self._cluster.list(autoscaling.HPAS, self.namespace)}
        kept = []
        for obj in objects:
            kind = str(obj.get("kind"))
            hpa_name = scaled.get((kind, manifest.name(obj))) if kind in _WORKLOAD_KINDS else None
            live = (self._cluster.get(_WORKLOAD_KINDS[kind], manifest.name(obj), self.namespace)
                    if hpa_name is not None else None)
            replicas = ((live or {}).get("spec") or {}).get("replicas")
            if live is None or replicas is None:
                kept.append(obj)
                continue
            obj = {**obj, "spec": {**(obj.get("spec") or {}), "replicas": int(replicas)}}
            progress(f"  {kind.lower()}/{manifest.name(obj)} keeps its {replicas} replica(s): "
                     f"HorizontalPodAutoscaler {hpa_name} scales it")
            kept.append(obj)
        return kept

    def _refuse_sqlite_on_several_nodes(self, objects: Sequence[KubeObject]) -> None:
        """A :class:`ConfigError` when services of ``objects`` use SQLite and the cluster has several schedulable nodes.

        SQLite lives in a file on a ReadWriteOnce claim: a pod scheduled on another node cannot
        mount it (and SQLite must not be shared over a network filesystem anyway).
        """
        on_sqlite = sorted(
            manifest.name(obj)
            for obj in objects
            if obj.get("kind") == "Deployment"
            for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
            for env in container.get("env") or []
            if env.get("name") == DATABASE_URL and str(env.get("value", "")).startswith("sqlite")
        )
        if not on_sqlite:
            return
        nodes = [manifest.name(n) for n in self._cluster.list(NODES) if _schedulable(n)]
        if len(nodes) <= 1:
            return
        raise ConfigError(
            f"the cluster has {len(nodes)} schedulable nodes ({', '.join(nodes)}), but the services "
            f"({', '.join(on_sqlite)}) keep their database in SQLite on one ReadWriteOnce volume, "
            "which only the pods of one node can mount",
            hint="on a multi-node cluster give them PostgreSQL: set OTTLAB_KUBE_DATABASE=postgres (the "
            "component k8s/components/postgres) and run `ottlab up --target kube` again; or use a one-node cluster",
        )

    def _require_the_services_image(self) -> None:
        """An :class:`ImageMissingError` when a lab pod cannot get the services image."""
        wanted = image.services_image()
        stuck = []
        for pod in self._cluster.list(PODS, self.namespace, label_selector=LAB_SELECTOR):
            status = pod.get("status") or {}
            for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
                reason = ((container.get("state") or {}).get("waiting") or {}).get("reason")
                if reason in IMAGE_PULL_FAILURES and image.same_image(str(container.get("image", "")), wanted):
                    stuck.append(f"pod/{manifest.name(pod)} is {reason}")
                    break
        if stuck:
            raise ImageMissingError(wanted, sorted(stuck))

    def _kustomize_components(self) -> tuple[str, ...]:
        """The components under k8s/components the lab adds to its overlay: its database's, then the mesh when on."""
        return (*manifest.DATABASES[self.database], *((kube_mesh.COMPONENT,) if self.cfg.mesh != "off" else ()))

    def _require_sidecars(self, objects: Sequence[KubeObject]) -> None:
        """A :class:`KubeError` when pods of the meshed workloads among ``objects`` run without Istio's sidecar."""
        pods = self._cluster.list(PODS, self.namespace, label_selector=LAB_SELECTOR)
        missing = kube_mesh.without_sidecar(pods, objects)
        if missing:
            raise KubeError(
                f"Istio injected no sidecar into {', '.join(f'pod/{p}' for p in missing)}, although the lab runs "
                f"with the mesh (OTTLAB_MESH={self.cfg.mesh}): those pods are outside it",
                hint=f"is istiod running? (ottlab addons install istio-base istiod; kubectl get namespace "
                     f"{self.namespace} --show-labels shows istio-injection=enabled); then restart those "
                     "workloads (ottlab restart <component> --target kube) so that their new pods get it")

    def manifests(self) -> list[KubeObject]:
        """The objects this lab declares, as ``up`` applies them (before the lab's own stamps: alert timing,
        replicas an HPA gave, the public entry's hash): the overlay with its components, its database's, then
        the mesh's unless ``OTTLAB_MESH=off`` (the namespace's mTLS mode set as asked)."""
        return list(self._manifests())

    def _manifests(self) -> list[KubeObject]:
        if self._rendered is not None:
            return self._rendered
        objects = manifest.render(self.overlay_dir, components=self._kustomize_components())
        if self.cfg.mesh != "off":
            objects = kube_mesh.with_mode(objects, self.cfg.mesh)
        namespaces = [manifest.name(o) for o in objects if o.get("kind") == "Namespace"]
        if namespaces != [self.namespace]:
            raise ConfigError(
                f"k8s/overlays/{self.overlay} deploys to namespace(s) {namespaces}, "
                f"but OTTLAB_NAMESPACE is {self.namespace!r}",
                hint="unset OTTLAB_NAMESPACE, or make an overlay that sets `namespace:` and renames the Namespace",
            )
        self._rendered = objects
        return objects

    # -- the public entry (labkit.targets.kube.entry) ----------------------------------------

    def _workload_kinds(self) -> dict[str, ResourceType]:
        """The kind of each workload the manifests declare, by name (Deployments are the default)."""
        return {manifest.name(o): _WORKLOAD_KINDS[str(o["kind"])] for o in self._manifests()
                if o.get("kind") in _WORKLOAD_KINDS}

    def _kind(self, comp: Component) -> ResourceType:
        """What the component runs as: a Deployment, or the StatefulSet of the edge's PoPs."""
        if _workload(comp) != cdn.EDGE.name:
            return DEPLOYMENTS  # only the edge is another kind: no need to render the manifests for it
        return self._workload_kinds().get(_workload(comp), DEPLOYMENTS)

    def _declared_pops(self) -> int:
        """The PoPs the manifests start: the edge StatefulSet's replicas."""
        for obj in self._manifests():
            if obj.get("kind") == "StatefulSet" and manifest.name(obj) == cdn.EDGE.name:
                return int((obj.get("spec") or {}).get("replicas") or 1)
        return cdn.DEFAULT_POPS

    def _describe_entry(self) -> str:
        current = self._current_entry()
        if current.mode == "nodeport":
            return f"viewers reach the lab at node ports of {current.host}, e.g. {current.url(entry.GATEWAY)}"
        return f"viewers reach the lab through port-forwards this process holds, e.g. {current.url(entry.GATEWAY)}"

    def _current_entry(self) -> Entry:
        """The entry the lab runs with: the one ``up`` chose, else the one its ConfigMap ott-public records."""
        if self._entry is None:
            stored = self._cluster.get(CONFIGMAPS, entry.PUBLIC_CONFIG, self.namespace)
            if stored is None:
                raise NotRunningError(f"the lab in namespace {self.namespace} (no configmap/{entry.PUBLIC_CONFIG}; "
                                      "`ottlab up --target kube` makes it)")
            self._entry = entry.from_config(stored, self.cfg, self.components, self._manifests())
        return self._entry

    def _viewer_url(self, service: str) -> str:
        """The URL viewers use for ``service`` (gateway, origin, edge-N): a node port, or a port-forward opened now."""
        current = self._current_entry()
        url = current.url(service)
        if current.mode == "nodeport":
            return url
        forward = self._forwards.get((service, "http"))
        if forward is not None and forward.alive:
            return forward.url
        comp = self.component(cdn.EDGE.name if service.startswith(f"{cdn.EDGE.name}-") else service)
        port = int(url.rsplit(":", 1)[1])
        # One process, one forward per port: a target made again (a notebook cell run twice) takes it over.
        earlier = _FIXED_FORWARDS.pop(port, None)
        if earlier is not None:
            earlier.close()
        forward = PortForward(functools.partial(self._tunnel, comp, "http", service), name=service, port=port)
        _FIXED_FORWARDS[port] = forward
        self._forwards[(service, "http")] = forward
        progress(f"port-forward {forward.url} -> service/{service} in namespace {self.namespace}")
        return forward.url

    def _publish_entry(self, current: Entry, pops: int) -> None:
        """Write ott-public for ``current`` and ``pops`` PoPs; when it changed, roll its readers and wait for them."""
        self._entry = current
        public = entry.public_config(current, pops)
        before = self._cluster.get(CONFIGMAPS, entry.PUBLIC_CONFIG, self.namespace)
        if before is not None and (before.get("data") or {}) == public["data"]:
            return
        self._cluster.apply(public, namespace=self.namespace)
        progress(f"applied configmap/{entry.PUBLIC_CONFIG} ({pops} PoP(s); {self._describe_entry()})")
        rolled = []
        for obj in self._manifests():
            if obj.get("kind") != "Deployment" or manifest.name(obj) not in entry.readers([obj]):
                continue
            keys = entry.keys_read(obj)
            if before is not None and entry.config_hash(before, keys) == entry.config_hash(public, keys):
                continue  # what it reads did not change: no rollout (the transcoder's would fail its jobs)
            if self._cluster.get(DEPLOYMENTS, manifest.name(obj), self.namespace) is None:
                continue
            stamp = {entry.CONFIG_HASH_ANNOTATION: entry.config_hash(public, keys)}
            self._cluster.patch(DEPLOYMENTS, manifest.name(obj), self.namespace,
                                {"spec": {"template": {"metadata": {"annotations": stamp}}}},
                                content_type=cluster.STRATEGIC_MERGE_PATCH)
            progress(f"  rolling deployment/{manifest.name(obj)}, which writes these URLs")
            rolled.append(manifest.name(obj))
        rollout.wait_all(self._cluster, self.namespace, rolled, self.cfg.ready_timeout)

    def _publish_probes(self, objects: Sequence[KubeObject] = (), *, pops: int | None = None) -> None:
        """Write the ConfigMap of the synthetic probes' targets (:func:`probes.kube_targets`) for the lab as it runs.

        Prometheus' job ``blackbox`` reads it (``file_sd_configs``; k8s/base/monitoring/prometheus.yml):
        each PoP's signed playlist and segment through its own Service, and the key path. PoPs:
        ``pops`` (``scale edge``), else the edge StatefulSet's replicas among ``objects`` (what ``up``
        applies) or in the cluster; the key path when the gateway is applied or runs. The URLs are
        signed here with the lab's Secret, which no committed file may hold. Nothing is written for
        a lab that has nothing to probe yet.
        """
        applied = {manifest.name(o): o for o in objects if o.get("kind") in _WORKLOAD_KINDS}
        if pops is None:
            edge = applied.get(cdn.EDGE.name) or self._cluster.get(STATEFULSETS, cdn.EDGE.name, self.namespace)
            pops = int(((edge or {}).get("spec") or {}).get("replicas") or 0)
        gateway = entry.GATEWAY in applied or self._cluster.get(DEPLOYMENTS, entry.GATEWAY, self.namespace) is not None
        if not pops and not gateway:
            return
        found = probes.kube_targets(entry.pop_services(pops), self.signing_secret() if pops else "", gateway=gateway)
        self._cluster.apply(probe_targets_config(found), namespace=self.namespace)
        progress(f"  applied configmap/{probes.KUBE_TARGETS} (synthetic probes: {len(found)} targets, "
                 f"{pops} PoP(s){' and the key path' if gateway else ''})")

    def _check_entry(self, objects: Sequence[KubeObject], readers: Sequence[str]) -> None:
        """After ``up``: the node ports answer from this machine, else the lab falls back to port-forwards.

        The gateway's ``/healthz`` at its node port is asked (when the gateway was applied). When it
        does not answer within :data:`ENTRY_TIMEOUT`, the entry becomes port-forwards (license and
        the transcoder are rolled with the new URLs) and a message says how to get the node ports.
        """
        import httpx

        current = self._current_entry()
        applied = {manifest.name(o) for o in objects if o.get("kind") == "Deployment"}
        if current.mode != "nodeport" or entry.GATEWAY not in applied:
            return
        url = f"{current.url(entry.GATEWAY)}/healthz"
        problem = [""]

        def answers() -> bool:
            try:
                return httpx.get(url, timeout=2.0).status_code == 200
            except httpx.HTTPError as exc:
                problem[0] = f"{type(exc).__name__}: {exc}"
                return False

        try:
            until(answers, ENTRY_TIMEOUT, 0.5, f"the lab's public entry {url}")
            progress(f"public entry: {current.url(entry.GATEWAY)} answers ({self._describe_entry()})")
            return
        except TimeoutExpired:
            pass
        progress(
            f"note: the lab's node ports do not answer at {current.host} ({url}: {problem[0] or 'no 200'}); "
            f"falling back to port-forwards held by this process. For node ports, create the cluster with "
            f"k8s/overlays/{self.overlay}/cluster.yaml (see README, The kube target), or set {entry.HOST_ENV} "
            f"to an address of a node this machine reaches; {entry.ENTRY_ENV}=forwards skips this check"
        )
        self._publish_entry(Entry.forwards(self.cfg, self.components), self._running_pops())

    def _running_pops(self) -> int:
        found = self._cluster.get(STATEFULSETS, cdn.EDGE.name, self.namespace)
        return int(((found or {}).get("spec") or {}).get("replicas") or self._declared_pops())

    def _status_of(self, comp: Component, deployment: KubeObject | None) -> ComponentStatus:
        urls = {port: f.url for (name, port), f in self._forwards.items() if name == comp.name and f.alive}
        if deployment is None:
            return ComponentStatus(
                comp.name,
                comp.layer,
                "absent",
                False,
                urls=urls,
                detail=f"no deployment/{comp.name} in namespace {self.namespace}",
            )
        rollout_status = rollout.RolloutStatus.of(deployment)
        desired, available = rollout_status.desired, rollout_status.available
        # More available than desired happens mid-rollout (a surge pod): still healthy.
        healthy = desired > 0 and available >= desired
        if desired == 0:
            state = "stopped"
        elif rollout_status.failure:
            state = "failed"
        elif healthy:
            state = "running"
        else:
            state = "starting"
        # Each PoP (a pod of the edge StatefulSet) at the URL viewers reach it at, as license signs it.
        replica_urls = {}
        if comp.name == cdn.EDGE.name and desired > 0 and deployment.get("kind") == "StatefulSet":
            try:
                replica_urls = {pop: self._viewer_url(pop) for pop in entry.pop_services(desired)}
            except NotRunningError as exc:  # a lab applied before the public entry existed: `up` again makes it
                progress(f"note: the PoPs' URLs are unknown: {exc.message}")
        return ComponentStatus(
            comp.name, comp.layer, state, healthy, urls=urls, replicas=available, detail=rollout_status.describe(),
            replica_urls=replica_urls,
        )

    def _not_a_sidecar(self, comp: Component, action: str) -> Component:
        if comp.follows is not None:
            raise ConfigError(f"{comp.name} is a sidecar in the pods of {comp.follows}",
                              hint=f"{action} {comp.follows} instead")
        return comp

    def _no_deployment(self, comp: Component) -> NotRunningError:
        return NotRunningError(f"component {comp.name!r} (no deployment/{comp.name} in namespace {self.namespace})")

    def _pods(self, comp: Component) -> list[KubeObject]:
        """The component's pods, by name."""
        pods = self._cluster.list(PODS, self.namespace, label_selector=f"{manifest.NAME_LABEL}={_workload(comp)}")
        return sorted(pods, key=manifest.name)

    def _backend(self, comp: Component, port: str, service_name: str | None = None) -> tuple[str, int]:
        """A ready pod behind the component's Service (or ``service_name``), and its port number for ``port``."""
        service_name = service_name or comp.name
        service = self._cluster.get(SERVICES, service_name, self.namespace)
        if service is None:
            raise NotRunningError(f"component {comp.name!r} (no service/{service_name} in namespace {self.namespace})")
        spec = service.get("spec") or {}
        target: str | int = port
        for service_port in spec.get("ports") or []:
            if service_port.get("name") == port or service_port.get("targetPort") == port:
                target = service_port.get("targetPort", service_port.get("port"))
                break
        selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
        pods = self._cluster.list(PODS, self.namespace, label_selector=selector) if selector else []
        ready = sorted((p for p in pods if _ready(p)), key=manifest.name)
        if not ready:
            raise NotRunningError(
                f"component {comp.name!r} (no ready pod behind service/{service_name} in namespace {self.namespace})"
            )
        pod = ready[0]
        if isinstance(target, int):
            return manifest.name(pod), target
        for container in pod.get("spec", {}).get("containers") or []:
            for container_port in container.get("ports") or []:
                if container_port.get("name") == target:
                    return manifest.name(pod), int(container_port["containerPort"])
        return manifest.name(pod), comp.port(port).container

    def _tunnel(self, comp: Component, port: str, service_name: str | None = None) -> Stream:
        """A new websocket port-forward to a ready pod of the component's Service (or ``service_name``)."""
        pod, number = self._backend(comp, port, service_name)
        return self._pod_tunnel(pod, number)

    def _pod_tunnel(self, pod: str, number: int) -> Stream:
        """A new websocket port-forward to port ``number`` of ``pod`` (one on its loopback too: it enters the pod)."""
        from kubernetes import client as k8s_client
        from kubernetes.stream import portforward

        # kubernetes.stream swaps the transport of the ApiClient it is given while it connects:
        # a private client keeps that away from the calls other threads make meanwhile.
        api_client = k8s_client.ApiClient(self._cluster.api_client.configuration)
        try:
            core = k8s_client.CoreV1Api(api_client)
            forward = portforward(core.connect_get_namespaced_pod_portforward, pod, self.namespace, ports=str(number))
        finally:
            api_client.close()  # type: ignore[no-untyped-call]
        stream: Stream = forward.socket(number)
        return stream

    def _exec_in(self, comp: Component, command: list[str]) -> str:
        """Run ``command`` in the component's container of one of its ready pods (the API's exec); its output.

        Bounded by :data:`EXEC_TIMEOUT`; a command that fails raises :class:`KubeError` with its output.
        """
        import json

        from kubernetes import client as k8s_client
        from kubernetes.stream import stream

        pod, _ = self._backend(comp, "http")
        shown = " ".join([*command[:2], "..."] if len(command) > 2 else command)
        progress(f"exec in pod/{pod} ({comp.name}): {shown}")
        # As for port-forwards: kubernetes.stream swaps the transport of the client it is given.
        api_client = k8s_client.ApiClient(self._cluster.api_client.configuration)
        try:
            core = k8s_client.CoreV1Api(api_client)
            ws = stream(core.connect_get_namespaced_pod_exec, pod, self.namespace, container=comp.name,
                        command=command, stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
            try:
                ws.run_forever(timeout=EXEC_TIMEOUT)
                if ws.is_open():
                    raise TimeoutExpired(f"the command in pod/{pod}", EXEC_TIMEOUT)
                output = str(ws.read_stdout() or "") + str(ws.read_stderr() or "")
                status_text = ws.read_channel(3) or ""
            finally:
                ws.close()
        finally:
            api_client.close()  # type: ignore[no-untyped-call]
        status = json.loads(status_text) if status_text.strip() else {}
        if status.get("status") != "Success":
            raise KubeError(f"the command in pod/{pod} failed: {status.get('message') or 'no exit status'}; "
                            f"its output: {output.strip()[-500:] or '(none)'}",
                            hint=f"kubectl -n {self.namespace} logs {pod} -c {comp.name} may tell more")
        return output

    def _close_forwards(self) -> None:
        for forward in self._forwards.values():
            forward.close()
        self._forwards.clear()


def probe_targets_config(found: Sequence[probes.ProbeTarget]) -> KubeObject:
    """The ConfigMap :data:`probes.KUBE_TARGETS`: ``found`` as Prometheus' file_sd file (labelled the lab's: ``down``
    deletes it)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": probes.KUBE_TARGETS,
            "labels": {manifest.PART_OF_LABEL: manifest.PART_OF, manifest.LAYER_LABEL: "monitoring"},
        },
        "data": {probes.KUBE_TARGETS_FILE: probes.file_sd(found)},
    }


def _alertmanager_config(url: str) -> str:
    """The configuration Alertmanager at ``url`` runs, as it read the file (``/api/v2/status``)."""
    import httpx

    response = httpx.get(f"{url}/api/v2/status", timeout=5.0)
    response.raise_for_status()
    return str(response.json()["config"]["original"])


def _pop_capacity(edge: KubeObject) -> int | None:
    """The capacity the edge workload's pod template gives its container ``edge`` (:data:`cdn.CAPACITY_SETTING`)."""
    template = ((edge.get("spec") or {}).get("template") or {}).get("spec") or {}
    for container in template.get("containers") or []:
        if container.get("name") == cdn.EDGE.name:
            for env in container.get("env") or []:
                if env.get("name") == cdn.CAPACITY_SETTING:
                    return cdn.capacity_value(env.get("value"))
    return None


def _workload(comp: Component) -> str:
    """The Deployment a component runs in: its own, or, for a sidecar, the one it follows."""
    return comp.follows or comp.name


def _schedulable(node: KubeObject) -> bool:
    """Whether ordinary pods may run on ``node``: not cordoned, no NoSchedule or NoExecute taint."""
    spec = node.get("spec") or {}
    if spec.get("unschedulable"):
        return False
    return not any(t.get("effect") in ("NoSchedule", "NoExecute") for t in spec.get("taints") or [])


def _ready(pod: KubeObject) -> bool:
    """Running, not being deleted, and its Ready condition true."""
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


__all__ = ["KubeTarget"]
