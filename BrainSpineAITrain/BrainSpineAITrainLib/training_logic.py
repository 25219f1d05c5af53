"""Logic of the BrainSpineAI Train module: the training pipelines, their command lines and
defaults, dataset summaries, device detection, runs in the background, registration of the
result in the user catalogue, and loss / metric curves as MRML table and plot nodes.

No Qt here and no torch in this process: training runs as ``brainspineai train ...`` in a
separate process (:class:`BrainSpineAILib.background.BackgroundJob`), and several GPUs are
used through ``torchrun --nproc_per_node N -m brainspineai train ...`` (Lightning Fabric
DDP) for the pipelines built on :mod:`brainspineai.engine`.

A run lives in ``user_home()/runs/<run name>/``: ``run.json`` (the request and its state),
``events.jsonl`` (every JSON event of the process), ``log.txt`` (its other output), the
model folder being trained (``<model id>/``, written atomically by the library) and the
checkpoint folder ``<model id>.work/`` (``--resume`` continues from it). When the process
succeeds, the model folder is renamed into the user catalogue ``user_home()/models/<id>``
(one ``os.replace``: the catalogue never holds a partial model), where the BrainSpineAI and
BrainSpineAISegment model lists find it at once. Cancel kills the process tree and leaves
the catalogue unchanged.

While a run is running, ``run.json`` records its process (``pid``, ``pid_started``: the
process's start time where the system tells it, ``host``): that is the run's lock. A run
recorded as running whose process is gone (Slicer closed or crashed) shows as
``interrupted`` (:func:`runState`); a run whose process is alive is never started again
(Resume refuses it), so two processes never write one checkpoint folder.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from BrainSpineAILib import mrml_utils
from BrainSpineAILib.background import BackgroundJob, cliCommand, libraryEnvironment, processOptions, pythonExecutable
from BrainSpineAILib.dependencies import DependencyMixin
from BrainSpineAILib.training_set import chosenFolder


def _hiddenWindow() -> dict:
    """``subprocess`` keyword arguments that keep a console window from opening on Windows
    (as :func:`BrainSpineAILib.background.processOptions` does for jobs); none elsewhere."""
    return {} if os.name == "posix" else {"startupinfo": processOptions()["startupinfo"]}


@dataclass
class Param:
    """One hyper-parameter of a pipeline: ``flag`` on the command line, ``default`` (the
    paper's / the library's), ``kind`` int | float | str | bool | choice."""

    name: str
    flag: str
    default: object
    kind: str = "float"
    choices: tuple = ()
    help: str = ""


@dataclass
class Pipeline:
    """A training pipeline of the library and how to run it."""

    key: str
    title: str
    command: tuple  # CLI words after "brainspineai"
    task: str  # card task of the model it writes
    data: str  # "image-folder" or "volumes"
    params: list = field(default_factory=list)
    ddp: bool = True  # runs under torchrun (Fabric) on several GPUs
    resume: bool = True
    initModel: bool = True
    paper: str = ""

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}


def _common(epochs, lr, batch, size):
    return [Param("epochs", "--epochs", epochs, "int"), Param("batch_size", "--batch-size", batch, "int", help="per GPU"),
            Param("lr", "--lr", lr, "float", help="peak learning rate (one-cycle)"),
            Param("image_size", "--image-size", size, "int", help="input side (px)"),
            Param("val_fraction", "--val-fraction", 0.15, "float"), Param("seed", "--seed", 0, "int"),
            Param("limit_per_class", "--limit-per-class", 0, "int", help="0: all images")]


PIPELINES = {
    "classifier": Pipeline(
        "classifier", "Supervised classifier (2D)", ("train", "classifier"), "classification-2d", "image-folder",
        _common(30, 2e-3, 32, 128) + [
            Param("architecture", "--architecture", "resnet18-w32", "str"),
            Param("skull_strip_p", "--skull-strip-p", 0.5, "float")],
        ddp=False, paper="ResNet-18 (He et al. 2016), AdamW + one-cycle, cross-entropy with label smoothing 0.05"),
    "affcl": Pipeline(
        "affcl", "AFF-CL (fusion + SupCon)", ("train", "affcl"), "classification-2d", "image-folder",
        _common(30, 2e-3, 32, 128) + [
            Param("backbone", "--backbone", "resnet18-w32", "str"),
            Param("fusion", "--fusion", "aff", "choice", ("aff", "iaff")),
            Param("crop_fraction", "--crop-fraction", 0.5, "float"),
            Param("supcon_weight", "--supcon-weight", 0.5, "float"),
            Param("temperature", "--temperature", 0.1, "float", help="SupCon temperature (Khosla et al. 2020)"),
            Param("queue_size", "--queue-size", 1024, "int"),
            Param("aux_weight", "--aux-weight", 0.3, "float"),
            Param("single_branch", "--single-branch", False, "bool"),
            Param("skull_strip_p", "--skull-strip-p", 0.5, "float")],
        paper="Attentional feature fusion (Dai et al. 2021) + supervised contrastive memory queue"),
    "simclr": Pipeline(
        "simclr", "SimCLR pre-training (SSCLNet)", ("train", "simclr"), "encoder-2d", "image-folder",
        _common(50, 2e-3, 64, 96) + [
            Param("backbone", "--backbone", "resnet18-w32", "str"),
            Param("proj_dim", "--proj-dim", 128, "int"),
            Param("temperature", "--temperature", 0.5, "float", help="NT-Xent temperature (Chen et al. 2020)")],
        paper="SimCLR (Chen et al. 2020), NT-Xent; SSCLNet pre-training"),
    "finetune": Pipeline(
        "finetune", "Fine-tuning (SSCLNet)", ("train", "finetune"), "classification-2d", "image-folder",
        _common(30, 2e-3, 32, 0) + [
            Param("encoder", "--encoder", "", "str", help="SimCLR encoder model id (empty: random init)"),
            Param("label_fraction", "--label-fraction", 1.0, "float"),
            Param("backbone", "--backbone", "resnet18-w32", "str"),
            Param("head", "--head", "linear", "choice", ("linear", "mlp")),
            Param("freeze_encoder", "--freeze-encoder", False, "bool"),
            Param("skull_strip_p", "--skull-strip-p", 0.5, "float")],
        paper="SSCLNet fine-tuning of a SimCLR encoder on a fraction of the labels"),
    "sicf": Pipeline(
        "sicf", "SICF (features + optimised classifier)", ("train", "sicf"), "sicf-2d", "image-folder",
        [Param("roi", "--roi", "quadrant", "choice", ("quadrant", "full"), help="full for brain slices"),
         Param("image_size", "--image-size", 224, "int", help="ROI side (SIFT and VGG16 input, px)"),
         Param("words", "--words", 512, "int", help="SIFT bag-of-visual-words codebook size"),
         Param("population", "--population", 10, "int", help="Lyrebird optimiser population"),
         Param("iterations", "--iterations", 10, "int", help="Lyrebird optimiser iterations"),
         Param("penalty", "--penalty", 0.01, "float", help="fitness penalty per fraction of features kept"),
         Param("vgg_weights", "--vgg-weights", "", "str", help="ImageNet VGG16 state dict (.pth)"),
         Param("val_fraction", "--val-fraction", 0.3, "float"), Param("seed", "--seed", 0, "int"),
         Param("limit_per_class", "--limit-per-class", 0, "int")],
        ddp=False, resume=False,
        paper="SICF: SIFT bag of words + VGG16 features, Lyrebird feature selection, random forest"),
    "segmenter": Pipeline(
        "segmenter", "3D tumour segmenter", ("train", "segmenter"), "segmentation-3d", "volumes",
        [Param("sequences", "--sequences", "flair t1ce", "str", help="input sequences; the first is the reference grid"),
         Param("epochs", "--epochs", 30, "int"), Param("batch_size", "--batch-size", 2, "int", help="patches per GPU"),
         Param("lr", "--lr", 3e-3, "float"), Param("patch_size", "--patch-size", 48, "int", help="voxels"),
         Param("spacing", "--spacing", 2.0, "float", help="model voxel size (mm)"), Param("seed", "--seed", 0, "int"),
         Param("val_cases", "--val-cases", 1, "int", help="cases held out for the card's Dice"),
         Param("samples_per_epoch", "--samples-per-epoch", 0, "int", help="patches per epoch (0: 8 per case)"),
         Param("clip_model", "--clip-model", "small-random", "str", help="CLIP text/image model (local)")],
        paper="CLIP-guided 3D U-Net (BraTS labels; Dice per WT / TC / ET)"),
}
RESUMABLE = ("cancelled", "failed", "interrupted")  # states Resume is offered for (pipelines with checkpoints)
RETRAIN_EPOCHS = 10  # fine-tuning from the current weights: fewer epochs than training from scratch
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
TERMINAL = ("succeeded", "failed", "cancelled")


def user_home() -> Path:
    from brainspineai.catalogue import user_home as home  # light module: no torch

    return home()


def runsRoot() -> Path:
    return user_home() / "runs"


def modelsRoot() -> Path:
    return user_home() / "models"


def processStarted(pid) -> str | None:
    """The start time of process ``pid`` as the system records it (Linux: field 22 of
    ``/proc/<pid>/stat``, clock ticks since boot), None where unknown. With the pid it tells
    a run's process from a later process that got the same pid."""
    try:
        with open(f"/proc/{int(pid)}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, ValueError, IndexError, TypeError):
        return None


def processAlive(pid, started: str | None = None) -> bool:
    """True while process ``pid`` runs (a zombie, ended but not yet reaped, does not count;
    with ``started``, a process with another start time is another process)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            return False
        if started is not None and fields[19] != str(started):
            return False
    except (OSError, IndexError):
        pass  # no /proc (macOS): the signal test is all there is
    return True


def runState(doc: dict) -> str:
    """The state of a run from its ``run.json``: the recorded state, except that a run
    recorded as ``running`` whose process is gone is ``interrupted``. A run started on
    another machine (``host``) cannot be checked here and stays ``running``."""
    state = doc.get("state") or "interrupted"
    if state != "running":
        return state
    if doc.get("host") and doc["host"] != socket.gethostname():
        return "running"
    return "running" if processAlive(doc.get("pid"), doc.get("pid_started")) else "interrupted"


def canResume(doc: dict) -> bool:
    """True when Resume may be offered for a run (its pipeline keeps checkpoints, and it
    was cancelled, failed or interrupted; never while its process is alive)."""
    pipe = PIPELINES.get(doc.get("pipeline") or "")
    return pipe is not None and pipe.resume and runState(doc) in RESUMABLE


def _atomicWriteJson(path: Path, doc: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def buildArguments(pipelineKey: str, dataDir, outDir, params: dict | None = None, device: str = "auto",
                   initModel: str = "", modelId: str = "", resume: bool = False, events: str = "-") -> list[str]:
    """The ``brainspineai`` arguments of a run (without the interpreter).

    :param params: values for :class:`Param` names; missing ones take the defaults; a
        value equal to the default is still written, so the run records every setting.
    :raises ValueError: unknown pipeline or parameter, or an option the pipeline lacks.
    """
    pipe = PIPELINES[pipelineKey]
    values = pipe.defaults()
    unknown = set(params or {}) - set(values)
    if unknown:
        raise ValueError(f"pipeline {pipelineKey} has no parameter {', '.join(sorted(unknown))}")
    values.update(params or {})
    argv = [*pipe.command, "--data", str(dataDir), "--out", str(outDir)]
    for p in pipe.params:
        v = values[p.name]
        if p.kind == "bool":
            if v:
                argv.append(p.flag)
        elif p.name == "sequences":
            argv += [p.flag, *str(v).split()]
        elif v not in ("", None):
            argv += [p.flag, str(v)]
    if pipelineKey != "sicf":
        argv += ["--device", device]
    if modelId:
        argv += ["--model-id", modelId]
    if initModel:
        if not pipe.initModel:
            raise ValueError(f"pipeline {pipelineKey} cannot start from a model's weights")
        argv += ["--init-model", str(initModel)]
    if resume:
        if not pipe.resume:
            raise ValueError(f"pipeline {pipelineKey} has no checkpoints to resume from")
        argv.append("--resume")
    argv += ["--events", events]
    return argv


def detectDevices(timeout: float = 60.0, useTorch: bool = True) -> dict:
    """GPUs of this machine without importing torch here: ``nvidia-smi -L`` first, else (with
    ``useTorch``; seconds, as torch loads) ``torch.cuda.device_count()`` in a subprocess (the
    Python that runs training).

    :returns: ``{"cuda": n, "names": [...], "source": "nvidia-smi" | "torch" | "none"}``.
    """
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout, **_hiddenWindow())
            names = [ln.split(":", 1)[1].split("(UUID")[0].strip() for ln in out.stdout.splitlines()
                     if ln.startswith("GPU ")]
            if out.returncode == 0 and names:
                return {"cuda": len(names), "names": names, "source": "nvidia-smi"}
        except (OSError, subprocess.TimeoutExpired):
            pass
    if not useTorch:
        return {"cuda": 0, "names": [], "source": "none"}
    code = ("import json, torch; n = torch.cuda.device_count(); "
            "print(json.dumps([torch.cuda.get_device_name(i) for i in range(n)]))")
    try:
        out = subprocess.run([pythonExecutable(), "-c", code], capture_output=True, text=True, timeout=timeout,
                             env=libraryEnvironment(), **_hiddenWindow())
        names = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else []
        return {"cuda": len(names), "names": names, "source": "torch"}
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return {"cuda": 0, "names": [], "source": "none"}


def launchCommand(arguments: list[str], gpus: int = 1) -> list[str]:
    """The process command: ``python -m brainspineai ARGS``, or with ``gpus`` > 1
    ``python -m torch.distributed.run --standalone --nproc_per_node N -m brainspineai ARGS``
    (``torchrun``, Fabric DDP: ``--batch-size`` is per GPU)."""
    if gpus and gpus > 1:
        return [pythonExecutable(), "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={int(gpus)}",
                "-m", "brainspineai", *map(str, arguments)]
    return cliCommand(*arguments)


class TrainingRun:
    """One training process and its run folder (see the module docstring).

    ``state``: running | succeeded | failed | cancelled; ``modelFolder`` the catalogue
    folder once registered; ``history`` the per-epoch records (epoch, loss, metrics).
    """

    def __init__(self, runDir: Path, request: dict, job: BackgroundJob):
        self.runDir = Path(runDir)
        self.request = request
        self.job = job
        self.state = "running"
        self.modelFolder = None
        self.history: list[dict] = []
        self.steps: list[dict] = []
        self._eventsFile = open(self.runDir / "events.jsonl", "a", encoding="utf-8")
        self._logFile = open(self.runDir / "log.txt", "a", encoding="utf-8")
        self._logSeen = 0
        self.lastEvents: list[dict] = []

    @property
    def modelId(self) -> str:
        return self.request["model_id"]

    @property
    def outDir(self) -> Path:
        return self.runDir / self.modelId

    @property
    def fraction(self) -> float:
        return self.job.fraction

    @property
    def etaSeconds(self):
        return self.job.etaSeconds

    @property
    def progressText(self) -> str:
        return self.job.progressText

    @property
    def errorText(self) -> str:
        return self.job.errorText

    def modelCard(self) -> dict | None:
        """The registered model's card (None before success)."""
        if self.modelFolder is None:
            return None
        return json.loads((Path(self.modelFolder) / "model.json").read_text(encoding="utf-8"))

    def resultText(self) -> str:
        """One line on the registered model: id, version, held-out figure."""
        card = self.modelCard()
        if card is None:
            return ""
        metrics = card.get("metrics") or {}
        val = metrics.get("validation") or {}
        if "accuracy" in val:
            figure = f"validation accuracy {val['accuracy']:.1%}"
        elif metrics.get("monitor", {}).get("knn_val_accuracy") is not None:
            figure = f"k-NN accuracy of the representation {metrics['monitor']['knn_val_accuracy']:.1%}"
        else:
            mean = (metrics.get("held_out") or {}).get("mean") or {}  # segmenter: Dice per region
            figure = ", ".join(f"Dice {k} {v['dice']:.3f}" for k, v in mean.items()
                               if isinstance(v, dict) and isinstance(v.get("dice"), (int, float)))
            figure = figure or "no held-out figure"
        return f"{card['id']} (version {card.get('version', 1)}): {figure}"

    def logText(self) -> str:
        return "\n".join(self.job.logLines)

    def takeNewEvents(self) -> list[dict]:
        """Events since the last call; each is also appended to ``events.jsonl``."""
        new = self.job.takeNewEvents()
        for ev in new:
            self._eventsFile.write(json.dumps(ev) + "\n")
            if ev.get("event") == "epoch":
                rec = {"epoch": ev.get("epoch"), "loss": ev.get("loss"), **(ev.get("metrics") or {})}
                self.history = [h for h in self.history if h.get("epoch") != rec["epoch"]] + [rec]
            elif ev.get("event") == "step":
                self.steps.append({"step": ev.get("step"), "loss": ev.get("loss")})
        self._eventsFile.flush()
        lines = self.job.logLines[self._logSeen:]
        if lines:
            self._logFile.write("\n".join(lines) + "\n")
            self._logFile.flush()
            self._logSeen += len(lines)
        return new

    def poll(self) -> bool:
        """Collect events; when the process has ended, register the model (success) or
        record the failure. :returns: True once the run is over."""
        if self.state in TERMINAL:
            return True
        ended = self.job.poll()
        self.lastEvents = self.takeNewEvents()
        if not ended:
            return False
        if self.job.cancelled:
            self._finish("cancelled")
        elif self.job.succeeded and (self.outDir / "model.json").is_file():
            self.modelFolder = registerModel(self.outDir, self.modelId)
            self._finish("succeeded")
        else:
            self._finish("failed")
        return True

    def wait(self, timeout=None) -> str:
        """Block until the process ends (tests and scripts); the GUI polls."""
        self.job.wait(timeout=timeout)
        self.poll()
        return self.state

    def _finish(self, state: str) -> None:
        self.state = state
        self.takeNewEvents()
        doc = dict(self.request, state=state, ended=_now(), error=self.errorText if state == "failed" else None,
                   model_folder=str(self.modelFolder) if self.modelFolder else None)
        _atomicWriteJson(self.runDir / "run.json", doc)
        self._eventsFile.close()
        self._logFile.close()

    def cancel(self, discard: bool = False) -> None:
        """Kill the process tree. Temporary folders of an interrupted model write are
        removed; the checkpoint stays (for Resume) unless ``discard``, which removes the
        whole run folder. The catalogue is never touched."""
        self.job.cancel()
        if self.state not in TERMINAL:
            self._finish("cancelled")
        for tmp in self.runDir.glob(f".{self.modelId}.*"):
            shutil.rmtree(tmp, ignore_errors=True)
        # a checkpoint being written when the process was killed (unique temporary names,
        # see brainspineai.checkpoint): the last complete last.pt stays
        for tmp in (self.runDir / f"{self.modelId}.work").glob(".*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass
        if self.outDir.exists():  # a model written but not yet registered is not kept either
            shutil.rmtree(self.outDir, ignore_errors=True)
        if discard:
            shutil.rmtree(self.runDir, ignore_errors=True)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def registerModel(folder: Path, modelId: str) -> Path:
    """Move a finished model folder into the user catalogue (one rename on the same
    filesystem, a copy then rename otherwise). :raises FileExistsError: the id is taken."""
    dest = modelsRoot() / modelId
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    try:
        os.replace(folder, dest)
    except OSError:
        tmp = dest.with_name(f".{modelId}.incoming")
        shutil.copytree(folder, tmp)
        os.replace(tmp, dest)
        shutil.rmtree(folder, ignore_errors=True)
    return dest


class TrainingLogic(DependencyMixin):
    """Training runs for the BrainSpineAI Train module (and Retrain in the other modules)."""

    pipelines = PIPELINES

    # --- datasets -------------------------------------------------------------------
    @staticmethod
    def summarizeDataset(dataDir) -> dict:
        """Dataset summary in this process (:func:`brainspineai.datasets.summarise`; Pillow
        and SimpleITK only). :raises brainspineai.errors.InputError: not a dataset folder."""
        from brainspineai.datasets import summarise

        return summarise(dataDir)

    @staticmethod
    def summaryText(doc: dict) -> str:
        from brainspineai.datasets import summary_text

        return summary_text(doc)

    @staticmethod
    def startSummary(dataDir, jsonOut) -> BackgroundJob:
        """The same summary as a background ``brainspineai dataset-summary`` process (large
        datasets); the result is written to ``jsonOut``."""
        return BackgroundJob(cliCommand("dataset-summary", str(dataDir), "--json", str(jsonOut)),
                             env=libraryEnvironment({"TQDM_DISABLE": "1"}))

    # --- devices --------------------------------------------------------------------
    @staticmethod
    def detectDevices(useTorch: bool = True) -> dict:
        return detectDevices(useTorch=useTorch)

    # --- runs -----------------------------------------------------------------------
    @staticmethod
    def checkModelId(modelId: str) -> None:
        """:raises ValueError: not a usable folder name, or already in the user catalogue."""
        if not NAME_PATTERN.match(modelId or ""):
            raise ValueError(f"model name '{modelId}': use letters, digits, '.', '_' or '-' (up to 100)")
        if (modelsRoot() / modelId).exists():
            raise ValueError(f"model name '{modelId}' is already in the catalogue ({modelsRoot() / modelId})")

    def startRun(self, pipelineKey: str, dataDir, modelId: str, params: dict | None = None, device: str = "auto",
                 gpus: int = 1, initModel: str = "", runName: str = "", resume: bool = False) -> TrainingRun:
        """Start a training process.

        :param runName: run folder name under ``runs/`` (default: the model id); with
            ``resume`` an existing run folder is continued from its checkpoint, using the
            arguments recorded in its ``run.json`` (the other arguments are ignored).
        :param gpus: processes under ``torchrun`` (pipelines with DDP only; else 1).
        :raises ValueError: bad name, id taken, unknown pipeline or parameter, no run to resume.
        """
        runName = runName or modelId
        runDir = runsRoot() / runName
        if resume:
            if not (runDir / "run.json").is_file():
                raise ValueError(f"no run '{runName}' to resume ({runDir / 'run.json'} not found)")
            request = json.loads((runDir / "run.json").read_text(encoding="utf-8"))
            if runState(request) == "running":
                raise ValueError(f"run '{runName}' is still running (process {request.get('pid')} on "
                                 f"{request.get('host') or 'this machine'}); it cannot be resumed twice")
            if not PIPELINES[request["pipeline"]].resume:
                raise ValueError(f"pipeline {request['pipeline']} cannot resume")
            self.checkModelId(request["model_id"])
            arguments = [a for a in request["arguments"] if a != "--resume"] + ["--resume"]
            request.update(state="running", resumed=_now(), arguments=arguments)
        else:
            self.checkModelId(modelId)
            if pipelineKey not in PIPELINES:
                raise ValueError(f"unknown pipeline '{pipelineKey}' (one of {', '.join(PIPELINES)})")
            if chosenFolder(dataDir) is None:  # "" from an empty path field would be "." (the working directory)
                raise ValueError("choose a dataset folder")
            if not NAME_PATTERN.match(runName):
                raise ValueError(f"run name '{runName}': use letters, digits, '.', '_' or '-'")
            if runDir.exists() and (runDir / "run.json").is_file():
                old = json.loads((runDir / "run.json").read_text(encoding="utf-8"))
                if runState(old) not in TERMINAL:
                    raise ValueError(f"run '{runName}' exists and did not end ({runState(old)}); "
                                     "resume it or choose another name")
                shutil.rmtree(runDir)
            runDir.mkdir(parents=True, exist_ok=True)
            pipe = PIPELINES[pipelineKey]
            gpus = gpus if pipe.ddp else 1
            arguments = buildArguments(pipelineKey, dataDir, runDir / modelId, params, device, initModel, modelId,
                                       events="-")
            request = {"pipeline": pipelineKey, "model_id": modelId, "data": str(dataDir), "params": params or {},
                       "device": device, "gpus": gpus, "init_model": initModel or None, "arguments": arguments,
                       "started": _now(), "state": "running"}
        command = launchCommand(request["arguments"], request.get("gpus", 1))
        try:
            job = BackgroundJob(command, env=libraryEnvironment({"TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}),
                                context={"run": str(runDir)})
        except (OSError, RuntimeError) as exc:  # the interpreter could not be started: the run did not begin
            _atomicWriteJson(runDir / "run.json", dict(request, state="failed", error=str(exc)))
            raise
        # run.json is written once the process exists, with its pid: the run's lock (see runState)
        request.update(pid=job.process.pid, pid_started=processStarted(job.process.pid), host=socket.gethostname())
        _atomicWriteJson(runDir / "run.json", request)
        return TrainingRun(runDir, request, job)

    def resumeRun(self, runName: str) -> TrainingRun:
        return self.startRun("", None, "", runName=runName, resume=True)

    @staticmethod
    def listRuns() -> list[dict]:
        """``run.json`` of every run folder, newest first, with ``name``, ``state`` as
        :func:`runState` sees it (a run recorded as running whose process is gone, after
        Slicer closed or crashed, is ``interrupted``; ``recorded_state`` keeps what the file
        says) and ``resumable`` (:func:`canResume`: never for a live run)."""
        out = []
        root = runsRoot()
        if not root.is_dir():
            return out
        for d in root.iterdir():
            try:
                doc = json.loads((d / "run.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if not isinstance(doc, dict):
                continue
            doc["name"] = d.name
            doc["recorded_state"] = doc.get("state")
            doc["state"] = runState(doc)
            doc["resumable"] = canResume(doc)
            out.append(doc)
        return sorted(out, key=lambda r: r.get("started", ""), reverse=True)

    # --- retraining ----------------------------------------------------------------
    @classmethod
    def retrainRequest(cls, modelRef: str, datasetDir, epochs: int | None = None, device: str = "auto") -> dict:
        """Arguments of :meth:`startRun` that fine-tune model ``modelRef`` on ``datasetDir``
        from its current weights, with the same network settings and the parent's recorded
        learning rate, batch size, seed and validation fraction, for ``epochs`` (default
        :data:`RETRAIN_EPOCHS`), and register the result as its next version (id
        ``<id>-v<N>``; the parent stays in the catalogue).

        An SICF model (task ``sicf-2d``) is retrained with ``train sicf --init-model``: the
        parent's ROI mode, image size, codebook size, Lyrebird budget (population,
        iterations, penalty), validation fraction and seed; its codebook, VGG16 and feature
        mask are reused and the forest is refitted (``epochs`` does not apply).

        :returns: ``{"pipelineKey", "dataDir", "modelId", "params", "initModel", "device"}``.
        :raises ValueError: a model no pipeline can retrain.
        """
        from brainspineai.catalogue import read_card, resolve_model
        from brainspineai.retrain import next_version_id

        folder = resolve_model(modelRef)
        card = read_card(folder)
        training = card.get("training") or {}
        net = card.get("network") or {}
        size = int(card["input_size"][0]) if card.get("input_size") else None
        kind = training.get("pipeline")
        if card["task"] == "segmentation-3d":
            from brainspineai.datasets import discover_volume_cases

            key, params = "segmenter", {}
            if card.get("sequences"):
                params["sequences"] = " ".join(card["sequences"])
            if card.get("spacing_mm"):
                params["spacing"] = float(card["spacing_mm"])
            if card.get("input_size"):
                params["patch_size"] = int(card["input_size"][0])
            try:  # one case held out for the card's Dice when there are at least three
                params["val_cases"] = 1 if len(discover_volume_cases(datasetDir)) >= 3 else 0
            except Exception:  # the run itself reports an unreadable dataset
                params["val_cases"] = 0
        elif card["task"] == "sicf-2d":
            key = "sicf"
            data, sel = card.get("training_data") or {}, card.get("selection") or {}
            params = {"roi": card["roi"], "image_size": size, "words": int(card["n_words"])}
            for name in ("population", "iterations", "penalty"):
                if isinstance(sel.get(name), (int, float)):
                    params[name] = sel[name]
            for name in ("val_fraction", "seed"):
                if isinstance(data.get(name), (int, float)):
                    params[name] = data[name]
            vgg = card.get("vgg16") or {}
            if vgg.get("source") == "file" and vgg.get("path") and Path(vgg["path"]).is_file():
                params["vgg_weights"] = vgg["path"]  # else the run looks in $BRAINSPINEAI_VGG16_WEIGHTS / torch's cache
        elif card["task"] == "encoder-2d":
            key, params = "simclr", {"backbone": net.get("backbone", "resnet18-w32"), "image_size": size,
                                     "proj_dim": net.get("proj_dim", 128)}
        elif kind in ("affcl", "cross-entropy"):
            key = "affcl"
            params = {"backbone": net.get("backbone", training.get("backbone", "resnet18-w32")), "image_size": size,
                      "fusion": training.get("fusion", "aff"), "crop_fraction": training.get("crop_fraction", 0.5),
                      "single_branch": not training.get("two_branch", True)}
        elif kind == "finetune":
            key = "finetune"
            params = {"backbone": net.get("backbone", "resnet18-w32"), "head": net.get("head", "linear"),
                      "image_size": size}
        elif kind is None and card["task"] == "classification-2d" and "network" not in card:
            key, params = "classifier", {"architecture": card["architecture"], "image_size": size}
        else:
            raise ValueError(f"model '{card['id']}' ({kind or card['task']}) cannot be retrained here")
        names = {p.name for p in PIPELINES[key].params}
        for name in ("lr", "batch_size", "seed", "val_fraction"):  # the parent's recipe where it is recorded
            if name in names and isinstance(training.get(name), (int, float)) and name not in params:
                params[name] = training[name]
        if "epochs" in names:
            params["epochs"] = int(epochs) if epochs else RETRAIN_EPOCHS
        version = int(card.get("version", 1) or 1) + 1
        modelId = next_version_id(card["id"], version)
        while (modelsRoot() / modelId).exists():  # a version made earlier from the same parent
            version += 1
            modelId = next_version_id(card["id"], version)
        return {"pipelineKey": key, "dataDir": str(datasetDir), "modelId": modelId, "params": params,
                "initModel": str(folder), "device": device}

    def retrain(self, modelRef: str, datasetDir, epochs: int | None = None, device: str = "auto") -> TrainingRun:
        """Start the run of :meth:`retrainRequest`."""
        return self.startRun(**self.retrainRequest(modelRef, datasetDir, epochs, device))

    # --- curves ---------------------------------------------------------------------
    PLOT_VIEW_NAME = "BrainSpineAI Train plot view"

    @staticmethod
    def curveNodes(modelId: str, scene=None):
        """A new table node and plot chart node for a run's curves, named after its model
        (``scene`` default: ``slicer.mrmlScene``)."""
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{modelId} training curves")
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{modelId} training chart")
        return table, chart

    @classmethod
    def plotViewNode(cls, chartNode, scene=None):
        """The Train module's own ``vtkMRMLPlotViewNode`` showing ``chartNode`` (created once
        per scene, found again by name). It never takes a chart the layout propagates
        (``SetDoPropagatePlotChartSelection(False)``, as Slicer's PlotsSelfTest does), so
        another module's ``ShowChartInLayout`` (Classify's per-slice chart) cannot replace the
        curves, and the layout's plot view is never touched (``scene`` default: ``slicer.mrmlScene``)."""
        if scene is None:
            import slicer

            scene = slicer.mrmlScene
        view = next((n for n in mrml_utils.nodes_by_class(scene, "vtkMRMLPlotViewNode")
                     if n.GetName() == cls.PLOT_VIEW_NAME), None)
        if view is None:
            view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode", cls.PLOT_VIEW_NAME)
        view.SetDoPropagatePlotChartSelection(False)
        view.SetPlotChartNodeID(chartNode.GetID() if chartNode is not None else None)
        return view

    @staticmethod
    def updateCurves(history: list[dict], tableNode, chartNode=None, scene=None) -> None:
        """Write per-epoch records (``epoch``, ``loss`` and metrics) into a
        ``vtkMRMLTableNode`` (one column each) and, with ``chartNode`` and ``scene``, one
        ``vtkMRMLPlotSeriesNode`` per column (against epoch) in the chart."""
        import vtk

        names = ["epoch", "loss"] + sorted({k for h in history for k in h
                                            if k not in ("epoch", "loss") and isinstance(h[k], (int, float))})
        table = vtk.vtkTable()
        for name in names:
            col = vtk.vtkDoubleArray()
            col.SetName(name)
            for h in history:
                v = h.get(name)
                col.InsertNextValue(float(v) if isinstance(v, (int, float)) else float("nan"))
            table.AddColumn(col)
        tableNode.SetAndObserveTable(table)
        tableNode.Modified()
        if chartNode is None or scene is None:
            return
        existing = {chartNode.GetNthPlotSeriesNode(i).GetName(): chartNode.GetNthPlotSeriesNode(i)
                    for i in range(chartNode.GetNumberOfPlotSeriesNodes())}
        for name in names[1:]:
            series = existing.get(name)
            if series is None:
                series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
                chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
            series.SetAndObserveTableNodeID(tableNode.GetID())
            series.SetXColumnName("epoch")
            series.SetYColumnName(name)
            series.SetPlotType(series.PlotTypeScatter)
            series.SetMarkerStyle(series.MarkerStyleCircle)
        chartNode.SetXAxisTitle("epoch")
        chartNode.SetTitle("training curves")
