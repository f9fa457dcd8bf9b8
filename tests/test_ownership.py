"""`cancel` and `status` touch only this sweep's own processes: a pid in a manifest is this sweep's job only while
the process with that pid names this sweep's job folder and started when it was recorded. Real processes: another
sweep's live local job under a recycled pid, a process whose command line says "submitit" about another folder, a
trainer whose job's controller was killed (found through its run folder's lock)."""
import json
import os
import signal
import subprocess
import sys
import time

from conftest import SLOW, TINY, states, wait_until, write_sweep

from commands.cli import main
from harness.sweep.executors import GONE, executor_class
from harness.sweep.processes import OwnedProcess, pid_alive, start_identity, stop_groups
from harness.sweep.spec import load_sweep
from harness.trainer import lock_holder

ONE_ROW = [{"label": "b", "set": {"model.adaln": "B"}}]


def manifest_path(path):
    return load_sweep(path).folder / "manifest.json"


def test_a_process_is_ours_only_if_it_names_our_folder_and_started_when_recorded(tmp_path):
    ours = tmp_path / "sweep" / "submitit" / "local"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(ours / "%j")])
    try:
        started = start_identity(sleeper.pid)
        assert OwnedProcess(sleeper.pid, str(ours), started).alive()
        assert OwnedProcess(sleeper.pid, str(ours), None).alive()           # a record without its start: the folder
        assert not OwnedProcess(sleeper.pid, str(ours), started.rsplit("/", 1)[0] + "/1").alive()  # started earlier
        assert not OwnedProcess(sleeper.pid, str(tmp_path / "sweep2" / "submitit" / "local"), started).alive()
        assert not OwnedProcess(sleeper.pid, str(tmp_path / "swee"), None).alive()   # a prefix is not the folder
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not OwnedProcess(sleeper.pid, str(ours), started).alive()


def test_a_group_that_ignores_sigterm_is_gone_when_stop_groups_returns():
    """What `cancel` relies on before it looks for trainers whose job is gone: a killed job is not one of them."""
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print(1, flush=True); time.sleep(300)"], stdout=subprocess.PIPE,
                                start_new_session=True)
    try:
        stubborn.stdout.readline()                                   # its handler is set
        stop_groups([stubborn.pid], grace=0.5)
        assert not pid_alive(stubborn.pid)
    finally:
        stubborn.kill()
        stubborn.wait()


def test_a_recycled_pid_of_another_sweeps_live_job_survives_cancel(sweep_dir, capsys):
    ours = write_sweep(sweep_dir, name="ours", overrides=TINY, seeds=[0], rows=ONE_ROW)
    theirs = write_sweep(sweep_dir, name="theirs", overrides={**SLOW, "train.steps": 4000}, seeds=[0], rows=ONE_ROW)
    assert main([str(ours), "--wait"]) == 0                     # our job ran and ended
    assert main([str(theirs)]) == 0
    (their_job,) = json.loads(manifest_path(theirs).read_text())["runs"].values()
    their_run = load_sweep(theirs).folder / their_job["run_name"]
    wait_until(lambda: lock_holder(their_run) is not None, what="their trainer")
    their_trainer = lock_holder(their_run)[0]
    # Our manifest's pid now names their live job (a pid reused after a reboot or a wrap), and a stale record of a
    # manifest written before start identities were kept names a process that says "submitit" about another folder.
    foreign = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "submitit",
                                str(sweep_dir / "elsewhere" / "submitit" / "local" / "1")])
    manifest = json.loads(manifest_path(ours).read_text())
    (run_name, record), = manifest["runs"].items()
    manifest["runs"][run_name] = {**record, "job_id": their_job["job_id"]}
    manifest["runs"]["stale"] = {**record, "run_name": "stale", "job_id": str(foreign.pid), "started": None}
    manifest_path(ours).write_text(json.dumps(manifest))
    try:
        executor = executor_class("local")(load_sweep(ours).folder, "ours")
        assert executor.states(list(manifest["runs"].values())) == {their_job["job_id"]: GONE, str(foreign.pid): GONE}
        assert states(ours)[("b", 0)].state == "done"
        capsys.readouterr()
        assert main(["cancel", str(ours)]) == 0
        assert "cancelled 0 local" in capsys.readouterr().out
        time.sleep(2)
        assert pid_alive(int(their_job["job_id"])) and pid_alive(their_trainer) and foreign.poll() is None
        assert states(theirs)[("b", 0)].state == "running"
    finally:
        foreign.kill()
        foreign.wait()
    assert main(["cancel", str(theirs)]) == 0                    # their own cancel stops them
    assert "cancelled 1 local" in capsys.readouterr().out
    assert not pid_alive(their_trainer)


def test_cancel_stops_a_trainer_whose_job_is_gone_and_its_lane_starts_no_other_run(sweep_dir, capsys):
    """One lane runs both rows one after another. Its controller is killed while the trainer is stopped (SIGSTOP:
    the kernel's SIGTERM for the controller's death waits); `cancel` finds the trainer by its run folder's lock."""
    path = write_sweep(sweep_dir, name="orphan", overrides={**SLOW, "train.steps": 4000}, seeds=[0],
                       executor={"kind": "local", "max_parallel": 1})
    assert main([str(path)]) == 0
    records = json.loads(manifest_path(path).read_text())["runs"]
    (job,) = {r["job_id"] for r in records.values()}
    first, second = (load_sweep(path).folder / name for name in records)
    wait_until(lambda: lock_holder(first) is not None and (first / "checkpoints" / "last.pt").exists(),
               what="the first run's trainer and checkpoint")
    trainer = lock_holder(first)[0]
    os.kill(trainer, signal.SIGSTOP)
    os.kill(int(job), signal.SIGKILL)
    wait_until(lambda: not pid_alive(int(job)), what="the controller to die")
    time.sleep(1)
    assert pid_alive(trainer)                                    # orphaned: nothing else would ever end it
    capsys.readouterr()
    assert main(["cancel", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cancelled 0 local" in out and f"stopped 1 trainer(s) whose job was gone: trainer pid {trainer} " \
                                          f"({first.name})" in out
    assert not pid_alive(trainer)
    assert not (second / "job.log").exists()                     # the lane started no other run
