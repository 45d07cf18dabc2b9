"""Stand-in of mmcv 1.x for the UniAD contract stand-in: ``Config`` (python configs with ``_base_`` inheritance,
``merge_from_dict`` with dotted keys), ``ConfigDict`` and ``DictAction`` as tools/train.py uses them (standard
library only, Python 3.8)."""

import argparse
import copy
import os.path as osp

__version__ = "1.6.1"

BASE_KEY = "_base_"


class ConfigDict(dict):
    """A dict whose keys read as attributes, nested dicts too."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def to_dict(self):
        return _plain(self)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _wrap(value):
    if isinstance(value, dict):
        return ConfigDict((k, _wrap(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _merge(child, base):
    """``child`` over ``base``: dicts merge key by key, anything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not value.pop("_delete_", False):
            merged[key] = _merge(value, merged[key])
        else:
            merged[key] = value
    return merged


def _read(filename):
    filename = osp.abspath(osp.expanduser(filename))
    namespace = {}
    with open(filename) as handle:
        text = handle.read()
    exec(compile(text, filename, "exec"), namespace)
    own = {
        k: v
        for k, v in namespace.items()
        if not k.startswith("__") and not callable(v) and type(v).__name__ != "module"
    }
    bases = own.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    merged, texts = {}, []
    for base in bases:
        base_dict, base_text = _read(osp.join(osp.dirname(filename), base))
        merged = _merge(base_dict, merged)
        texts.append(base_text)
    return _merge(own, merged), "\n".join(texts + [text])


def _format(value):
    if isinstance(value, dict):
        return "dict(" + ", ".join(f"{k}={_format(v)}" for k, v in value.items()) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ", ".join(_format(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, range):
        return f"range({value.start}, {value.stop})"
    return repr(value)


class Config:
    def __init__(self, cfg_dict=None, filename=None, text=""):
        object.__setattr__(self, "_cfg_dict", _wrap(cfg_dict or {}))
        object.__setattr__(self, "filename", filename)
        object.__setattr__(self, "text", text)

    @staticmethod
    def fromfile(filename, use_predefined_variables=True, import_custom_modules=True):
        cfg_dict, text = _read(filename)
        return Config(cfg_dict, filename=filename, text=text)

    def merge_from_dict(self, options, allow_list_keys=True):
        for key, value in options.items():
            node = self._cfg_dict
            parts = key.split(".")
            for part in parts[:-1]:
                if isinstance(node, list) and part.isdigit():
                    node = node[int(part)]
                else:
                    node = node.setdefault(part, ConfigDict())
            last = parts[-1]
            if isinstance(node, list) and last.isdigit():
                node[int(last)] = _wrap(value)
            elif isinstance(value, dict) and isinstance(node.get(last), dict):
                node[last] = _wrap(_merge(value, _plain(node[last])))
            else:
                node[last] = _wrap(value)

    @property
    def pretty_text(self):
        return "\n".join(f"{k} = {_format(v)}" for k, v in self._cfg_dict.items()) + "\n"

    def dump(self, path):
        with open(path, "w") as handle:
            handle.write(self.pretty_text)

    def get(self, key, default=None):
        return self._cfg_dict.get(key, default)

    def __getattr__(self, name):
        return getattr(self._cfg_dict, name)

    def __setattr__(self, name, value):
        self._cfg_dict[name] = _wrap(value)

    def __getitem__(self, name):
        return self._cfg_dict[name]

    def __contains__(self, name):
        return name in self._cfg_dict


def _parse_value(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if text == "None":
        return None
    return text


def _parse_iterable(text):
    """mmcv's DictAction: '[a,b]', '(a,b)', 'a,b' and nested brackets."""
    text = text.strip().replace(" ", "")
    if text.startswith(("[", "(")) and text.endswith(("]", ")")):
        is_tuple, text = text.startswith("("), text[1:-1]
    elif "," not in text:
        return _parse_value(text)
    else:
        is_tuple = False
    items, depth, start = [], 0, 0
    for i, char in enumerate(text + ","):
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif char == "," and depth == 0:
            if text[start:i]:
                items.append(_parse_iterable(text[start:i]))
            start = i + 1
    return tuple(items) if is_tuple else items


class DictAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        options = {}
        for item in values:
            key, value = item.split("=", maxsplit=1)
            options[key] = _parse_iterable(value)
        setattr(namespace, self.dest, options)
