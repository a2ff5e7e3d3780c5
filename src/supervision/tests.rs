//! Supervision behaviour as OTP documents it, on one executor with a manual
//! clock: nothing here sleeps. Names read as a grid: strategy, restart type,
//! exit kind, expected effect.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;

use super::*;
use crate::sync::{settle, Event};
use crate::time::ManualClock;

fn run<F: Future<Output = ()> + 'static>(f: F) {
    crate::sync::run_on_fresh_shard(f)
}

#[derive(Clone)]
enum Action {
    Exit(ExitReason),
    Panic(&'static str),
}

/// Records what children do and lets the test make them exit or panic.
#[derive(Default)]
struct Lab {
    log: RefCell<Vec<String>>,
    triggers: RefCell<HashMap<&'static str, (Event, Option<Action>)>>,
}

impl Lab {
    fn new() -> Rc<Lab> {
        Rc::new(Lab::default())
    }

    fn note(&self, line: String) {
        self.log.borrow_mut().push(line);
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.borrow_mut())
    }

    fn starts(&self, id: &str) -> usize {
        let wanted = format!("start {id}");
        self.log.borrow().iter().filter(|l| **l == wanted).count()
    }

    fn arm(&self, id: &'static str) -> Event {
        let event = Event::new();
        self.triggers.borrow_mut().insert(id, (event.clone(), None));
        event
    }

    fn fire(&self, id: &'static str, action: Action) {
        let event = {
            let mut triggers = self.triggers.borrow_mut();
            let entry = triggers.get_mut(id).expect("child armed");
            entry.1 = Some(action);
            entry.0.clone()
        };
        event.set();
    }

    fn action(&self, id: &'static str) -> Option<Action> {
        self.triggers.borrow().get(id).and_then(|(_, a)| a.clone())
    }
}

/// A worker that logs its start, obeys (or ignores) stop requests, and exits
/// or panics when the test fires it.
fn probe(lab: &Rc<Lab>, id: &'static str, restart: Restart, obeys_shutdown: bool) -> ChildSpec {
    let lab = lab.clone();
    ChildSpec::worker(id, move |ctx| {
        let lab = lab.clone();
        async move {
            lab.note(format!("start {id}"));
            let trigger = lab.arm(id);
            let shutdown = ctx.shutdown_requested();
            let fired = future::or(
                async {
                    trigger.wait().await;
                    true
                },
                async {
                    if obeys_shutdown {
                        shutdown.await;
                    } else {
                        future::pending::<()>().await;
                    }
                    false
                },
            )
            .await;
            if !fired {
                lab.note(format!("stop {id}"));
                return ExitReason::Shutdown;
            }
            match lab.action(id) {
                Some(Action::Exit(reason)) => reason,
                Some(Action::Panic(message)) => panic!("{message}"),
                None => ExitReason::Error("fired without action".into()),
            }
        }
    })
    .restart(restart)
    .shutdown(Shutdown::TimeoutMs(1_000))
}

fn env(clock: &Rc<ManualClock>) -> SupervisorEnv {
    SupervisorEnv::new(clock.clone())
}

fn start(
    spec: SupervisorSpec,
    env: SupervisorEnv,
) -> (Supervisor, Event, glommio::Task<ExitReason>) {
    let supervisor = spec.build(env).expect("valid spec");
    let running = supervisor.spawn();
    (supervisor, running.stop, running.task)
}

fn three(lab: &Rc<Lab>, strategy: Strategy, restart: Restart) -> SupervisorSpec {
    SupervisorSpec::new("sup", SupFlags::new(strategy).intensity(10, 1_000))
        .child(probe(lab, "a", restart, true))
        .child(probe(lab, "b", restart, true))
        .child(probe(lab, "c", restart, true))
}

#[test]
fn one_for_one_permanent_panic_restarts_only_that_child() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let (sup, stop, task) = start(
            three(&lab, Strategy::OneForOne, Restart::Permanent),
            env(&clock),
        );
        settle(8).await;
        assert_eq!(lab.take_log(), ["start a", "start b", "start c"]);

        lab.fire("b", Action::Panic("boom"));
        settle(8).await;
        assert_eq!(lab.take_log(), ["start b"], "siblings untouched");
        assert_eq!(sup.restarts(), 1);
        assert_eq!(sup.child_restarts(sup.child_key("b").unwrap()), Some(1));
        assert_eq!(sup.child_restarts(sup.child_key("a").unwrap()), Some(0));
        assert_eq!(sup.running_count(), 3);

        stop.set();
        assert_eq!(task.await, ExitReason::Shutdown);
    });
}

#[test]
fn one_for_all_transient_panic_restarts_all_in_order_after_reverse_stop() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let (sup, stop, task) = start(
            three(&lab, Strategy::OneForAll, Restart::Transient),
            env(&clock),
        );
        settle(8).await;
        lab.take_log();

        lab.fire("b", Action::Panic("boom"));
        settle(16).await;
        assert_eq!(
            lab.take_log(),
            ["stop c", "stop a", "start a", "start b", "start c"]
        );
        assert_eq!(sup.restarts(), 1);
        stop.set();
        assert_eq!(task.await, ExitReason::Shutdown);
    });
}

#[test]
fn one_for_all_transient_normal_exit_restarts_nothing() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let (sup, stop, task) = start(
            three(&lab, Strategy::OneForAll, Restart::Transient),
            env(&clock),
        );
        settle(8).await;
        lab.take_log();
        lab.fire("a", Action::Exit(ExitReason::Normal));
        settle(8).await;
        assert!(lab.take_log().is_empty());
        assert_eq!(sup.restarts(), 0);
        assert_eq!(sup.running_count(), 2);
        assert_eq!(
            sup.child_count(),
            3,
            "a transient child that ended normally keeps its spec"
        );
        stop.set();
        task.await;
    });
}

#[test]
fn rest_for_one_permanent_error_restarts_it_and_later_children() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let (sup, stop, task) = start(
            three(&lab, Strategy::RestForOne, Restart::Permanent),
            env(&clock),
        );
        settle(8).await;
        lab.take_log();

        lab.fire("b", Action::Exit(ExitReason::Error("bad".into())));
        settle(16).await;
        assert_eq!(lab.take_log(), ["stop c", "start b", "start c"]);
        assert_eq!(sup.child_restarts(sup.child_key("a").unwrap()), Some(0));
        stop.set();
        task.await;
    });
}

#[test]
fn restart_type_by_exit_reason_follows_otp_table() {
    // (restart type, exit, restarted?, spec kept?)
    let table = [
        (
            Restart::Permanent,
            Action::Exit(ExitReason::Normal),
            true,
            true,
        ),
        (Restart::Permanent, Action::Panic("p"), true, true),
        (
            Restart::Transient,
            Action::Exit(ExitReason::Normal),
            false,
            true,
        ),
        (
            Restart::Transient,
            Action::Exit(ExitReason::Shutdown),
            false,
            true,
        ),
        (
            Restart::Transient,
            Action::Exit(ExitReason::Error("e".into())),
            true,
            true,
        ),
        (Restart::Transient, Action::Panic("p"), true, true),
        (
            Restart::Temporary,
            Action::Exit(ExitReason::Normal),
            false,
            false,
        ),
        (Restart::Temporary, Action::Panic("p"), false, false),
    ];
    for (restart, action, restarted, kept) in table {
        run(async move {
            let (lab, clock) = (Lab::new(), ManualClock::new());
            let spec = SupervisorSpec::new("sup", SupFlags::new(Strategy::OneForOne))
                .child(probe(&lab, "w", restart, true));
            let (sup, stop, task) = start(spec, env(&clock));
            settle(8).await;
            lab.take_log();
            lab.fire("w", action);
            settle(8).await;
            let case = format!("{restart:?}");
            assert_eq!(lab.starts("w") == 1, restarted, "{case}: restarted");
            assert_eq!(sup.child_count() == 1, kept, "{case}: spec kept");
            assert_eq!(sup.restarts(), u64::from(restarted), "{case}: counted");
            stop.set();
            task.await;
        });
    }
}

#[test]
fn one_for_one_intensity_exceeded_escalates_with_max_intensity() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let spec = SupervisorSpec::new(
            "sup",
            SupFlags::new(Strategy::OneForOne).intensity(2, 1_000),
        )
        .child(probe(&lab, "w", Restart::Permanent, true))
        .child(probe(&lab, "other", Restart::Permanent, true));
        let (sup, _stop, task) = start(spec, env(&clock));
        settle(8).await;
        for _ in 0..2 {
            lab.fire("w", Action::Panic("again"));
            settle(8).await;
            clock.advance(Duration::from_millis(100));
        }
        assert!(!sup.is_stopped());
        lab.take_log();
        lab.fire("w", Action::Panic("third within the period"));
        settle(16).await;
        assert!(sup.is_stopped());
        assert_eq!(lab.take_log(), ["stop other"], "remaining children stopped");
        assert_eq!(task.await, ExitReason::MaxIntensity);
    });
}

#[test]
fn one_for_one_restarts_spread_beyond_period_never_escalate() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let spec = SupervisorSpec::new(
            "sup",
            SupFlags::new(Strategy::OneForOne).intensity(1, 1_000),
        )
        .child(probe(&lab, "w", Restart::Permanent, true));
        let (sup, stop, task) = start(spec, env(&clock));
        settle(8).await;
        for _ in 0..5 {
            lab.fire("w", Action::Panic("now and then"));
            settle(8).await;
            clock.advance(Duration::from_millis(1_001));
        }
        assert!(!sup.is_stopped());
        assert_eq!(sup.restarts(), 5);
        stop.set();
        assert_eq!(task.await, ExitReason::Shutdown);
    });
}

#[test]
fn nested_escalation_restarts_child_supervisor_then_reaches_root() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let inner = SupervisorSpec::new(
            "inner",
            SupFlags::new(Strategy::OneForOne).intensity(0, 1_000),
        )
        .child(probe(&lab, "w", Restart::Permanent, true))
        .into_child_spec()
        .expect("valid");
        let spec = SupervisorSpec::new(
            "root",
            SupFlags::new(Strategy::OneForOne).intensity(1, 1_000),
        )
        .child(probe(&lab, "sibling", Restart::Permanent, true))
        .child(inner);
        let (root, _stop, task) = start(spec, env(&clock));
        settle(8).await;
        lab.take_log();

        // Inner allows no restart: it gives up, and root restarts it (1 of 1).
        lab.fire("w", Action::Panic("first"));
        settle(16).await;
        assert_eq!(lab.take_log(), ["start w"]);
        assert_eq!(root.restarts(), 1);
        assert!(!root.is_stopped());
        let tree = root.tree();
        assert_eq!(tree.find(&["inner"]).map(|n| n.restarts), Some(1));

        // Again: root's own intensity is exceeded, it stops its other children
        // and exits with MaxIntensity.
        lab.fire("w", Action::Panic("second"));
        settle(16).await;
        assert_eq!(lab.take_log(), ["stop sibling"]);
        assert_eq!(task.await, ExitReason::MaxIntensity);
    });
}

#[test]
fn shutdown_stops_children_in_reverse_start_order() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let (_sup, stop, task) = start(
            three(&lab, Strategy::OneForOne, Restart::Permanent),
            env(&clock),
        );
        settle(8).await;
        assert_eq!(lab.take_log(), ["start a", "start b", "start c"]);
        stop.set();
        assert_eq!(task.await, ExitReason::Shutdown);
        assert_eq!(lab.take_log(), ["stop c", "stop b", "stop a"]);
    });
}

#[test]
fn shutdown_timeout_kills_a_child_that_ignores_the_request_only_when_it_runs_out() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let stubborn =
            probe(&lab, "stubborn", Restart::Permanent, false).shutdown(Shutdown::TimeoutMs(100));
        let spec = SupervisorSpec::new("sup", SupFlags::new(Strategy::OneForOne)).child(stubborn);
        let (sup, stop, task) = start(spec, env(&clock));
        settle(8).await;
        stop.set();
        settle(8).await;
        assert!(!sup.is_stopped(), "still inside the timeout");
        clock.advance(Duration::from_millis(99));
        settle(8).await;
        assert!(!sup.is_stopped());
        clock.advance(Duration::from_millis(1));
        settle(8).await;
        assert!(sup.is_stopped(), "killed once the timeout ran out");
        assert_eq!(task.await, ExitReason::Shutdown);
        assert!(!lab.take_log().contains(&"stop stubborn".to_string()));
    });
}

#[test]
fn shutdown_brutal_kill_needs_no_time_and_infinity_waits_for_the_child() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let brutal =
            probe(&lab, "brutal", Restart::Permanent, false).shutdown(Shutdown::BrutalKill);
        let patient =
            probe(&lab, "patient", Restart::Permanent, false).shutdown(Shutdown::Infinity);
        let spec = SupervisorSpec::new("sup", SupFlags::new(Strategy::OneForOne))
            .child(patient)
            .child(brutal);
        let (sup, stop, _task) = start(spec, env(&clock));
        settle(8).await;
        stop.set();
        settle(8).await;
        // brutal (started last, stopped first) is gone; patient is waited for.
        assert!(!sup.is_child_running(sup.child_key("brutal").unwrap()));
        clock.advance(Duration::from_secs(3_600));
        settle(8).await;
        assert!(!sup.is_stopped(), "infinity never times out");
        lab.fire("patient", Action::Exit(ExitReason::Shutdown));
        settle(8).await;
        assert!(sup.is_stopped());
    });
}

#[test]
fn one_for_one_panicking_child_never_disturbs_siblings() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let spec = SupervisorSpec::new(
            "sup",
            SupFlags::new(Strategy::OneForOne).intensity(1_000, 1_000),
        )
        .child(probe(&lab, "crashy", Restart::Permanent, true))
        .child(probe(&lab, "calm", Restart::Permanent, true));
        let (sup, stop, task) = start(spec, env(&clock));
        settle(8).await;
        for _ in 0..50 {
            lab.fire("crashy", Action::Panic("again"));
            settle(8).await;
        }
        assert_eq!(lab.starts("calm"), 1);
        assert_eq!(lab.starts("crashy"), 51);
        assert!(sup.is_child_running(sup.child_key("calm").unwrap()));
        let stats = sup.env().stats.summary();
        assert_eq!(stats.restarts, 50);
        assert_eq!(stats.measured, 50, "every restart is timed");
        stop.set();
        task.await;
    });
}

fn dynamic_spec(restart: Restart, shutdown: Shutdown, children_max: usize) -> SupervisorSpec {
    SupervisorSpec::new(
        "pool",
        SupFlags::new(Strategy::SimpleOneForOne).intensity(100, 1_000),
    )
    .template(
        DynamicTemplate {
            id: Rc::from("session"),
            restart,
            shutdown,
            kind: ChildKind::Worker,
        },
        children_max,
    )
}

fn waiting_worker(started: Rc<RefCell<usize>>, crash: Event) -> StartFn {
    Rc::new(move |ctx: ChildContext| -> ChildFuture {
        *started.borrow_mut() += 1;
        let crash = crash.clone();
        Box::pin(async move {
            let crashed = future::or(
                async {
                    crash.wait().await;
                    true
                },
                async {
                    ctx.shutdown_requested().await;
                    false
                },
            )
            .await;
            if crashed {
                ExitReason::Error("crash".into())
            } else {
                ExitReason::Shutdown
            }
        })
    })
}

#[test]
fn simple_one_for_one_temporary_children_are_removed_not_restarted() {
    run(async {
        let clock = ManualClock::new();
        let (sup, stop, task) = start(
            dynamic_spec(Restart::Temporary, Shutdown::TimeoutMs(100), 10),
            env(&clock),
        );
        let started = Rc::new(RefCell::new(0));
        let crash = Event::new();
        let calm = Event::new();
        let doomed = sup
            .start_child(waiting_worker(started.clone(), crash.clone()))
            .unwrap();
        let kept = sup
            .start_child(waiting_worker(started.clone(), calm))
            .unwrap();
        settle(8).await;
        assert_eq!(sup.child_count(), 2);
        crash.set();
        settle(8).await;
        assert_eq!(sup.child_count(), 1);
        assert_eq!(*started.borrow(), 2, "not restarted");
        assert!(!sup.is_child_running(doomed));
        assert!(sup.is_child_running(kept));
        stop.set();
        assert_eq!(task.await, ExitReason::Shutdown);
        assert_eq!(sup.child_count(), 0);
    });
}

#[test]
fn simple_one_for_one_permanent_children_restart_and_bound_holds() {
    run(async {
        let clock = ManualClock::new();
        let (sup, stop, task) = start(
            dynamic_spec(Restart::Permanent, Shutdown::BrutalKill, 2),
            env(&clock),
        );
        let started = Rc::new(RefCell::new(0));
        let crash = Event::new();
        let key = sup
            .start_child(waiting_worker(started.clone(), crash.clone()))
            .unwrap();
        sup.start_child(waiting_worker(started.clone(), Event::new()))
            .unwrap();
        assert!(matches!(
            sup.start_child(waiting_worker(started.clone(), Event::new())),
            Err(SupervisorError::Full { max: 2, .. })
        ));
        settle(8).await;
        assert!(sup.kill_child(key));
        settle(8).await;
        assert_eq!(*started.borrow(), 3, "killed permanent child restarted");
        assert_eq!(sup.child_restarts(key), Some(1));
        stop.set();
        task.await;
        assert!(matches!(
            sup.start_child(waiting_worker(started, Event::new())),
            Err(SupervisorError::Stopping(_))
        ));
    });
}

#[test]
fn simple_one_for_one_shutdown_stops_all_children_under_one_timer() {
    run(async {
        let clock = ManualClock::new();
        let (sup, stop, task) = start(
            dynamic_spec(Restart::Temporary, Shutdown::TimeoutMs(50), 2_000),
            env(&clock),
        );
        let stubborn: StartFn = Rc::new(|_ctx| Box::pin(future::pending::<ExitReason>()));
        for _ in 0..1_500 {
            sup.start_child(stubborn.clone()).unwrap();
        }
        settle(8).await;
        stop.set();
        settle(8).await;
        assert_eq!(clock.sleeper_count(), 1, "one timer for the whole group");
        assert!(!sup.is_stopped());
        clock.advance(Duration::from_millis(50));
        settle(16).await;
        assert!(sup.is_stopped());
        assert_eq!(task.await, ExitReason::Shutdown);
    });
}

#[test]
fn terminate_child_stops_and_forgets_a_dynamic_child() {
    run(async {
        let clock = ManualClock::new();
        let (sup, stop, task) = start(
            dynamic_spec(Restart::Permanent, Shutdown::TimeoutMs(10), 10),
            env(&clock),
        );
        let started = Rc::new(RefCell::new(0));
        let key = sup
            .start_child(waiting_worker(started.clone(), Event::new()))
            .unwrap();
        settle(4).await;
        sup.terminate_child(key).await.expect("exists");
        settle(4).await;
        assert_eq!(sup.child_count(), 0);
        assert_eq!(*started.borrow(), 1, "terminated, not restarted");
        assert_eq!(
            sup.terminate_child(key).await,
            Err(SupervisorError::NoSuchChild)
        );
        stop.set();
        task.await;
    });
}

#[test]
fn dropping_a_running_supervisor_kills_its_children() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let sup = three(&lab, Strategy::OneForOne, Restart::Permanent)
            .build(env(&clock))
            .unwrap();
        let running = sup.spawn();
        settle(8).await;
        assert_eq!(sup.running_count(), 3);
        drop(running.task);
        settle(8).await;
        assert_eq!(sup.running_count(), 0);
        assert!(sup.is_stopped());
        assert!(
            !lab.take_log().iter().any(|l| l.starts_with("stop")),
            "killed, not asked"
        );
    });
}

#[test]
fn tree_reports_ids_kinds_strategies_counts_and_restarts_as_json() {
    run(async {
        let (lab, clock) = (Lab::new(), ManualClock::new());
        let pool = dynamic_spec(Restart::Temporary, Shutdown::BrutalKill, 10);
        let pool_handle: Rc<RefCell<Option<Supervisor>>> = Rc::default();
        let slot = pool_handle.clone();
        let pool = pool
            .on_start(move |sup| *slot.borrow_mut() = Some(sup.clone()))
            .into_child_spec()
            .unwrap();
        let spec = SupervisorSpec::new(
            "shard-0",
            SupFlags::new(Strategy::OneForOne).intensity(5, 1_000),
        )
        .child(probe(&lab, "svc", Restart::Permanent, true))
        .child(pool);
        let (root, stop, task) = start(spec, env(&clock));
        settle(8).await;
        let pool = pool_handle.borrow().clone().expect("pool started");
        for _ in 0..3 {
            pool.start_child(Rc::new(|_ctx| Box::pin(future::pending::<ExitReason>())))
                .unwrap();
        }
        lab.fire("svc", Action::Panic("once"));
        settle(8).await;

        let tree = root.tree();
        assert_eq!(tree.id, "shard-0");
        assert_eq!(tree.strategy, Some("one_for_one"));
        assert_eq!(tree.child_count, 2);
        assert_eq!(tree.children_restarted, 1);
        let svc = tree.find(&["svc"]).unwrap();
        assert_eq!(
            (svc.kind, svc.restarts, svc.running),
            (ChildKind::Worker, 1, true)
        );
        let pool_node = tree.find(&["pool"]).unwrap();
        assert_eq!(pool_node.strategy, Some("simple_one_for_one"));
        assert_eq!(pool_node.child_count, 3);

        let json: serde_json::Value = serde_json::from_str(&tree.to_json()).unwrap();
        assert_eq!(json["id"], "shard-0");
        assert_eq!(json["kind"], "supervisor");
        assert_eq!(json["children"][0]["kind"], "worker");
        assert_eq!(json["children"][1]["strategy"], "simple_one_for_one");
        assert_eq!(json["children"][1]["child_count"], 3);
        assert!(tree
            .render_text()
            .contains("pool [simple_one_for_one] children=3"));
        stop.set();
        task.await;
    });
}

#[test]
fn spec_check_names_the_bad_field() {
    let clock = ManualClock::new();
    let lab = Lab::new();
    let duplicate = SupervisorSpec::new("s", SupFlags::new(Strategy::OneForOne))
        .child(probe(&lab, "a", Restart::Permanent, true))
        .child(probe(&lab, "a", Restart::Permanent, true));
    assert_eq!(duplicate.check(), Err(SpecError::DuplicateId("a".into())));
    let no_template = SupervisorSpec::new("s", SupFlags::new(Strategy::SimpleOneForOne));
    assert_eq!(no_template.check(), Err(SpecError::MissingTemplate));
    let zero_period = SupervisorSpec::new("s", SupFlags::new(Strategy::OneForOne).intensity(1, 0));
    assert!(matches!(
        zero_period.build(env(&clock)),
        Err(SpecError::ZeroPeriod)
    ));
    let static_in_dynamic = dynamic_spec(Restart::Temporary, Shutdown::BrutalKill, 1).child(probe(
        &lab,
        "a",
        Restart::Permanent,
        true,
    ));
    assert_eq!(
        static_in_dynamic.check(),
        Err(SpecError::StaticChildrenInSimpleOneForOne)
    );
}
