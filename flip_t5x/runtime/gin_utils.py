"""Gin command-line plumbing shared by the binaries, with t5x's flags and `--gin.X=V` syntax.

Gin files include each other by paths relative to a search path, as t5x's do
(`include 'gin_configs/models/flip_vit_l16.gin'`); the project root is always searched, so the
binaries work from any working directory.

`run` is every binary's one path from an error to a message and an exit status. A configuration
error (`GinConfigError`: an unknown or unparsable binding, a value a configurable rejects, a path
that does not exist) ends it with one line `<binary>: configuration error: <what, naming the
binding or path>` on stderr and exit status 2; an error of a class the binary declares bad input
(`run(main, bad_input=(checkpoints.NoCheckpointError, ...))`) with `<binary>: error: <message>` and
status 2; `Failed` (a run whose result is a failure) with status 1; the classes in `exit_status`
with their own (train: a non-finite loss, 3); any other error with its traceback, as Python ends.

Gin parses an `include` where it stands, so a file that binds X and then includes a file that
binds X again keeps the included value; `parse_gin_flags` warns about that order, naming X and
both lines (bind X after the include). A later file or the command line overriding an included
default is the normal layering and stays silent.
"""
from __future__ import annotations

import inspect
import os
import re
import sys
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple, Type

from absl import app
from absl import flags
from absl import logging
import gin
from gin import config_parser

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def define_gin_flags() -> None:
  """The gin flags of t5x's binaries; safe to call from several modules of one process."""
  if "gin_file" in flags.FLAGS:
    return
  flags.DEFINE_multi_string("gin_file", default=[], help="Gin files, parsed in order.")
  flags.DEFINE_multi_string("gin_bindings", default=[], help="Individual gin bindings.")
  flags.DEFINE_list("gin_search_paths", default=["."], help="Where to look for gin files.")


class GinConfigError(ValueError):
  """A gin file or binding that cannot be applied; the message names it."""


class Failed(RuntimeError):
  """A binary ran and its result is a failure (no image could be read, an export that disagrees)."""


BAD_INPUT_EXIT_STATUS = 2  # a configuration error is bad input too
FAILED_EXIT_STATUS = 1
_GIN_CALL_SUFFIX = re.compile(
    r"In call to configurable '([^']+)' \(<[^>]*>\)(?: in scope '([^']+)')?")


def one_line(error: BaseException) -> str:
  """The error's message on one line (gin adds where it happened on further lines)."""
  text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
  return _GIN_CALL_SUFFIX.sub(
      lambda m: f"(in {m.group(2) + '/' if m.group(2) else ''}{m.group(1)})", text)


def _raised_inside(error: BaseException, fn: Callable[..., Any]) -> bool:
  """Whether `fn`'s own body is on the error's traceback (not just gin building its arguments)."""
  code = inspect.unwrap(fn).__code__
  tb = error.__traceback__
  while tb is not None:
    if tb.tb_frame.f_code is code:
      return True
    tb = tb.tb_next
  return False


def call_configured(fn: Callable[..., Any], configured: Callable[[], Any]) -> Any:
  """`configured()`, gin's call of `fn`; errors building `fn`'s arguments become GinConfigError.

  Gin constructs the objects the bindings name (`MODEL = @models.FlipModel()`, ...) before `fn`
  runs; a constructor that rejects its value (`MASK_RATIO = 1.5`) raises there, and that is a
  configuration error. Errors raised inside `fn` itself pass through unchanged.
  """
  try:
    return configured()
  except GinConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (any constructor's rejection)
    if _raised_inside(e, fn):
      raise
    raise GinConfigError(one_line(e)) from e


def rewrite_gin_args(args: Sequence[str]) -> List[str]:
  """Rewrites `--gin.NAME=VALUE` to `--gin_bindings=NAME = VALUE` (t5x's syntax)."""
  out = []
  for arg in args:
    if arg.startswith("--gin."):
      if "=" not in arg:
        raise GinConfigError(f"gin bindings must look like --gin.NAME=VALUE, got {arg!r}")
      name, value = arg[len("--gin."):].split("=", 1)
      arg = f"--gin_bindings={name} = {value}"
    out.append(arg)
  return out


def search_paths(user_paths: Sequence[str]) -> List[str]:
  paths = list(user_paths)
  if os.path.isdir(os.path.join(PROJECT_ROOT, "gin_configs")) and PROJECT_ROOT not in paths:
    paths.append(PROJECT_ROOT)
  return paths


def parse_gin_flags(gin_search_paths: Sequence[str], gin_files: Sequence[str],
                    gin_bindings: Sequence[str], finalize_config: bool = True) -> None:
  """Parses files then bindings; any failure becomes a `GinConfigError` naming what failed.

  flip_t5x's programs parse here: t5x's gin names then mean FLIP's classes, t5x installed or not.
  """
  from flip_t5x.runtime import t5x_interop  # pylint: disable=g-import-not-at-top  (imports t5x)
  t5x_interop.use_flip_classes()
  for path in search_paths(gin_search_paths):
    gin.add_config_file_search_path(path)
  if not gin_files:
    raise GinConfigError("no --gin_file given: pass at least one gin file (e.g. "
                         "--gin_file=gin_configs/flip_vit_b16.gin)")
  for gin_file in gin_files:
    try:
      gin.parse_config_file(gin_file)
    except (IOError, OSError) as e:
      raise GinConfigError(f"cannot read gin file {gin_file!r}: {e}") from e
    except Exception as e:  # gin raises many types; all name the file/line in their text
      raise GinConfigError(f"in gin file {gin_file!r}: {one_line(e)}") from e
  for warning in shadowed_bindings(gin_search_paths, gin_files):
    logging.warning("%s", warning)
  for binding in gin_bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise GinConfigError(f"in gin binding {binding!r}: {one_line(e)}") from e
  if finalize_config:
    try:
      gin.finalize()
    except Exception as e:  # e.g. a `%gin.REQUIRED` macro nobody set
      raise GinConfigError(f"{e}{_required_hint(str(e), gin_search_paths, gin_files)}") from e
  logging.info("Gin configuration:\n%s", gin.config_str())


class _NamesOnly(config_parser.ParserDelegate):
  """Parses gin statements without resolving `@` references or `%` macros (names and lines only)."""

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return None

  def macro(self, macro_name):
    return None


def _find_gin_file(name: str, gin_search_paths: Sequence[str]) -> Optional[str]:
  """Where gin finds `name` (as is, then under each search path), or None."""
  prefixes = [""] if os.path.isabs(name) else ["", *search_paths(gin_search_paths)]
  return next((os.path.join(p, name) for p in prefixes if os.path.isfile(os.path.join(p, name))),
              None)


class _GinFiles:
  """The statements of gin files and of the files they include, each file parsed once."""

  def __init__(self, gin_search_paths: Sequence[str]):
    self.gin_search_paths = gin_search_paths
    self._statements: Dict[str, list] = {}
    self._bound: Dict[str, Dict[Tuple[str, str, str], config_parser.Location]] = {}

  def statements(self, path: str) -> list:
    if path not in self._statements:
      with open(path, encoding="utf-8") as f:
        self._statements[path] = list(config_parser.ConfigParser(f, _NamesOnly()))
    return self._statements[path]

  def includes(self, path: str) -> List[str]:
    found = (_find_gin_file(st.filename, self.gin_search_paths) for st in self.statements(path)
             if isinstance(st, config_parser.IncludeStatement))
    return [f for f in found if f is not None]

  def closure(self, gin_files: Sequence[str]) -> List[str]:
    """The given files and, recursively, the files they include, in order, each once."""
    seen, todo = [], [f for f in (_find_gin_file(g, self.gin_search_paths) for g in gin_files)
                      if f is not None]
    while todo:
      path = todo.pop(0)
      if path not in seen:
        seen.append(path)
        todo += self.includes(path)
    return seen

  def bound(self, path: str, within: Tuple[str, ...] = ()) -> Dict[Tuple[str, str, str],
                                                                  config_parser.Location]:
    """Every (scope, selector, parameter) `path` and its includes bind: the last place each is."""
    if path not in self._bound:
      out = {}
      for st in self.statements(path):
        if isinstance(st, config_parser.BindingStatement):
          out[st[:3]] = st.location
        elif isinstance(st, config_parser.IncludeStatement):
          included = _find_gin_file(st.filename, self.gin_search_paths)
          if included is not None and included not in within + (path,):  # a cycle: gin's error
            out.update(self.bound(included, within + (path,)))
      self._bound[path] = out
    return self._bound[path]


def _binding_name(key: Tuple[str, str, str]) -> str:
  scope, selector, arg = key
  return f"{scope + '/' if scope else ''}{selector}{'.' + arg if arg else ''}"


def shadowed_bindings(gin_search_paths: Sequence[str], gin_files: Sequence[str]) -> List[str]:
  """One line for each binding a gin file makes before an `include` that binds it again.

  Gin parses an include where it stands, so the included value wins and the earlier one is lost
  without a word (`VOCAB_FILE = 'mine.txt'` above `include 'gin_configs/demo/eval.gin'`). Only
  that order is reported: a binding after the include, in a later file or on the command line
  overrides the included default, as intended. Names are compared as spelt (macros, or
  `scope/configurable.parameter`).
  """
  files = _GinFiles(gin_search_paths)
  lines = []
  for path in files.closure(gin_files):
    own: Dict[Tuple[str, str, str], config_parser.Location] = {}
    lost = {}
    for st in files.statements(path):
      if isinstance(st, config_parser.BindingStatement):
        own[st[:3]] = st.location
        lost.pop(st[:3], None)  # bound again after the include: this value stands
      elif isinstance(st, config_parser.IncludeStatement):
        included = _find_gin_file(st.filename, gin_search_paths)
        if included is not None:
          for key, where in files.bound(included).items():
            if key in own:
              lost[key] = (own[key], st.location, where)
    for key, (mine, include, theirs) in lost.items():
      name = _binding_name(key)
      lines.append(f"gin: {name} set at {path}:{mine.line_num} is lost: the include at "
                   f"{path}:{include.line_num} sets it again ({theirs.filename}:"
                   f"{theirs.line_num}) and gin parses an include where it stands; set {name} "
                   "after the include")
  return lines


def _required_hint(message: str, gin_search_paths: Sequence[str],
                   gin_files: Sequence[str]) -> str:
  """Names the file that declared a required macro and how to set it."""
  m = re.match(r"(\w+)/macro\.value set to `%gin\.REQUIRED`", message)
  if not m:
    return ""
  name = m.group(1)
  where = []
  for path in _GinFiles(gin_search_paths).closure(gin_files):
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        if re.match(rf"\s*{name}\s*=\s*%gin\.REQUIRED", line):
          where.append(f"{path}:{i}")
  return (f" (required by {', '.join(where) or 'the gin files'}; set it, e.g. "
          f"--gin.{name}=...)")


@gin.configurable(module="flip_t5x.runtime.gin_utils")
def configured_model(model: Any = gin.REQUIRED) -> Any:
  """MODEL as the gin files bind it."""
  return model


def parse_gin_flags_for_model(gin_search_paths: Sequence[str], gin_files: Sequence[str],
                              gin_bindings: Sequence[str], finalize_config: bool = True) -> Any:
  """Parses the gin flags of a binary that needs only the model, and returns `%MODEL`."""
  parse_gin_flags(gin_search_paths, gin_files, list(gin_bindings) + [
      "flip_t5x.runtime.gin_utils.configured_model.model = %MODEL"], finalize_config)
  return call_configured(configured_model, configured_model)


def program_name() -> str:
  """`flip_t5x.train` under `python -m flip_t5x.train`, else the script's file name."""
  spec = getattr(sys.modules["__main__"], "__spec__", None)
  return spec.name if spec is not None and spec.name else os.path.basename(sys.argv[0])


def _exit(label: str, message: str, status: int) -> NoReturn:
  print(f"{program_name()}: {label}: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def _message(error: BaseException) -> str:
  """The error's own message, without the call site gin appends (the binary's name says where)."""
  return str(error).split("\n  In call to configurable")[0]


def _reporting_errors(main: Callable[[Sequence[str]], Optional[int]],
                      bad_input: Tuple[Type[BaseException], ...],
                      exit_status: Mapping[Type[BaseException], int]
                      ) -> Callable[[Sequence[str]], Optional[int]]:
  def wrapped(argv: Sequence[str]) -> Optional[int]:
    try:
      return main(argv)
    except GinConfigError as e:
      _exit("configuration error", one_line(e), BAD_INPUT_EXIT_STATUS)
    except Exception as e:  # pylint: disable=broad-except  (re-raised unless declared)
      status = next((s for c, s in exit_status.items() if isinstance(e, c)),
                    BAD_INPUT_EXIT_STATUS if isinstance(e, bad_input)
                    else FAILED_EXIT_STATUS if isinstance(e, Failed) else None)
      if status is None:
        raise
      _exit("error", _message(e), status)
  return wrapped


def _parse_flags(argv: Sequence[str]) -> List[str]:
  try:
    args = rewrite_gin_args(argv)
  except GinConfigError as e:
    _exit("configuration error", one_line(e), BAD_INPUT_EXIT_STATUS)
  return app.parse_flags_with_usage(args)


def define_verbose_flag() -> None:
  """`--verbose`: keep TensorFlow/CUDA start-up notices (`flip_t5x._quiet` reads it from argv)."""
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "Show TensorFlow/XLA C++ start-up notices (oneDNN, CUDA "
                      "probing); off by default unless TF_CPP_MIN_LOG_LEVEL is set.")


def run(main: Callable[[Sequence[str]], Optional[int]],
        bad_input: Sequence[Type[BaseException]] = (),
        exit_status: Optional[Mapping[Type[BaseException], int]] = None) -> None:
  """`app.run` with t5x's `--gin.NAME=VALUE` rewriting, and how every binary ends on an error.

  Args:
    main: the binary's main (absl's: argv in; a returned int is the exit status).
    bad_input: error classes that mean the user's input is wrong (a path without a checkpoint):
      `<binary>: error: <message>` on stderr, exit status 2. `GinConfigError` always is:
      `<binary>: configuration error: <one line>`, status 2.
    exit_status: further error classes and their own exit status (train: a non-finite loss, 3).
  """
  define_verbose_flag()
  app.run(_reporting_errors(main, tuple(bad_input), dict(exit_status or {})),
          flags_parser=_parse_flags)


def summarize_gin_config(model_dir: str, summary_writer=None, step: int = 0) -> None:
  """Writes the gin config in use to MODEL_DIR/config.gin (and TensorBoard), as t5x does."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return
  config_str = gin.config_str()
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, "config.gin"), "w", encoding="utf-8") as f:
    f.write(config_str)
  operative = gin.operative_config_str()
  if operative.strip():
    with open(os.path.join(model_dir, "operative_config.gin"), "w", encoding="utf-8") as f:
      f.write(operative)
  if summary_writer is not None:
    text = "\n".join("    " + line for line in config_str.splitlines())
    summary_writer.write_texts(step, {"config": text})
    summary_writer.flush()
