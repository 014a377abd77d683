"""The controller's autoscaler on what gateways and workers report: a step of
concurrent clients, scale to zero and back, what it says about each decision (pure:
the policy's own tests are in tests/autoscale)."""

from __future__ import annotations

from llmos.bus.messages import DeploymentTraffic, RequestEvent, TrafficReport
from llmos.controller.autoscaler import Autoscaler
from llmos.store.tables import Deployment, Replica

AUTO = {"min": 1, "max": 4, "wait_s": 2.0, "percentile": 0.9, "idle_s": 30.0}


def deployment(replicas: int = 1, autoscale: dict[str, float] | None = None) -> Deployment:
    return Deployment(name="chat", project="default", model_ref="gemma",
                      model_version="gemma@1", replicas=replicas, generation=1,
                      engine_settings={}, autoscale=autoscale or AUTO)


def replica(rid: str, state: str = "ready") -> Replica:
    return Replica(id=rid, project="default", deployment="chat", node="a", generation=1,
                   model_version="gemma@1", state=state)


def report(gateway: str, at: float, arrivals: int, in_flight: int) -> TrafficReport:
    return TrafficReport(gateway=gateway, at=at, deployments=[DeploymentTraffic(
        project="default", deployment="chat", arrivals=arrivals, in_flight=in_flight)])


def finished(seconds: float, at: float) -> RequestEvent:
    return RequestEvent(request_id="r", deployment="chat", worker_id="w", outcome="ok",
                        duration_s=seconds + 0.1, service_s=seconds, at=at)


def test_a_step_to_eight_clients_on_two_slots_scales_up_at_the_next_look() -> None:
    scaler = Autoscaler(since=0.0)
    d, mine = deployment(), [replica("r1")]
    for second in range(30):  # one client: a request every 2 s, 1.5 s each
        scaler.on_traffic(report("g", second, arrivals=second % 2, in_flight=1), second)
        if second % 2:
            scaler.on_request(finished(1.5, second), second)
    steady = scaler.look(d, mine, slots=2, now=30.0)
    assert steady.decision.replicas == 1
    # Eight clients at once: six wait for the two slots. The report alone says look now.
    assert scaler.on_traffic(report("g", 30.2, arrivals=7, in_flight=8), 30.2)
    step = scaler.look(d, mine, slots=2, now=30.3)
    assert step.decision.replicas > 1 and step.observed.waiting == 6
    text = step.message("chat", 1)
    for word in ("λ", "μ", "c = ", "predicted wait", "6 waiting"):
        assert word in text
    status = step.status(1)
    assert status["replicas"] == step.decision.replicas and status["service_s"] == 1.5


def test_at_zero_a_request_brings_one_replica_and_idleness_takes_it_away() -> None:
    scaler = Autoscaler(since=0.0)
    auto = {**AUTO, "min": 0}
    idle = scaler.look(deployment(0, auto), [], slots=2, now=100.0)
    assert idle.decision.replicas == 0
    assert scaler.on_traffic(report("g", 100.5, arrivals=1, in_flight=1), 100.5)
    woken = scaler.look(deployment(0, auto), [], slots=2, now=100.6)
    assert woken.decision.replicas == 1
    scaler.on_traffic(report("g", 104.0, arrivals=0, in_flight=0), 104.0)
    busy = scaler.look(deployment(1, auto), [replica("r1")], slots=2, now=110.0)
    assert busy.decision.replicas == 1  # not idle for 30 s yet
    gone = scaler.look(deployment(1, auto), [replica("r1")], slots=2, now=131.0)
    assert gone.decision.replicas == 0 and "idle" in gone.decision.reason


def test_a_replica_that_cannot_be_placed_holds_the_count() -> None:
    scaler = Autoscaler(since=0.0)
    d = deployment(2)
    scaler.cap(d, now=50.0)
    scaler.on_traffic(report("g", 50.0, arrivals=20, in_flight=12), 50.0)
    held = scaler.look(d, [replica("r1"), replica("r2", "starting")], slots=2, now=50.5)
    assert held.decision.replicas == 2 and "cannot be placed" in held.decision.reason
    scaler.uncap()
    assert scaler.look(d, [replica("r1"), replica("r2")], slots=2,
                       now=51.0).decision.replicas > 2


def test_cold_starts_are_measured_from_placement_to_ready() -> None:
    scaler = Autoscaler(since=0.0)
    r = replica("r1", "scheduled")
    scaler.placed("r1", 10.0)
    scaler.became_ready(r, 13.5)
    assert scaler.look(deployment(), [replica("r1")], slots=2, now=14.0).cold_start_s == 3.5


def test_service_times_of_another_projects_deployment_are_its_own() -> None:
    scaler = Autoscaler(since=0.0)
    other = RequestEvent(request_id="r", deployment="_team.chat", project="team",
                         worker_id="w", outcome="ok", duration_s=9.0, service_s=9.0, at=1.0)
    scaler.on_request(other, 1.0)
    scaler.on_request(finished(1.0, 1.0), 1.0)
    assert scaler.look(deployment(), [replica("r1")], slots=2,
                       now=2.0).observed.service_s == 1.0
    assert scaler.service[("team", "chat")].mean_cv2(2.0) == (9.0, 1.0)


def test_no_scale_down_before_it_has_watched_the_traffic_for_a_cooldown() -> None:
    scaler = Autoscaler(since=0.0)
    d = deployment(3)  # switched on with three replicas, no traffic seen yet
    mine = [replica("r1"), replica("r2"), replica("r3")]
    assert scaler.look(d, mine, slots=2, now=10.0).decision.replicas == 3
    assert scaler.look(d, mine, slots=2, now=69.0).decision.replicas == 3
    assert scaler.look(d, mine, slots=2, now=71.0).decision.replicas == 1
