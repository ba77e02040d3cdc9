#!/usr/bin/env python3
"""Write ``chat.jsonl``: conversations in the OpenAI ``messages`` format, some of them broken.

Usage::

    python sample_data/build_chat.py

Every row is written out below by hand: who says what, in which order, which tool is
called with which arguments. What the assistant and the tools say about a package is
its real Debian description, taken from ``general.jsonl`` (itself read from the dpkg
status file, see ``build_general.py``), so the text is real and the structure is what
the rows are about: system prompts, multi-turn dialogues, tool calls with their
results, and the broken conversations the ``conversation`` stage removes.
``BROKEN`` lists each broken row with the reason it gets; ``tests/test_stage_conversation.py``
checks the stage against it. Reruns are byte-identical.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

SYSTEM_HELP = "You help people new to Debian choose packages. Answer in plain words, in a few sentences."
SYSTEM_PACKAGING = "You are a Debian packaging assistant. Say what a package is for before anything else."
APT_SHOW = {
    "type": "function",
    "function": {
        "name": "apt_show",
        "description": "Show the description of a Debian package",
        "parameters": {"type": "object", "properties": {"package": {"type": "string"}}, "required": ["package"]},
    },
}

BROKEN = {
    "chat-0031": "conversation:unknown_role",  # "human" in an OpenAI file
    "chat-0032": "conversation:role_order",  # two user turns in a row
    "chat-0033": "conversation:last_turn",  # ends on the user's follow-up question
    "chat-0034": "conversation:empty_turn",  # an empty reply
    "chat-0035": "conversation:orphan_tool_result",  # a tool result nobody asked for
    "chat-0036": "conversation:missing_tool_result",  # a call the assistant never waits for
    "chat-0037": "conversation:tool_arguments",  # arguments cut off mid-JSON
    "chat-0038": "conversation:unknown_tool",  # calls a tool the row does not define
    "chat-0039": "conversation:misplaced_system",  # a system prompt in the middle
    "chat-0040": "conversation:first_turn",  # the assistant speaks first
    "chat-0041": "conversation:unknown_role",  # "bot"
}
"""Rows the conversation stage removes, and why (as read from the file)."""
AFTER_CLEANING = {
    "chat-0042": "conversation:empty_turn",  # a reply of nothing but HTML, empty once noise strips it
    "chat-0043": "exact_duplicate",  # chat-0011 again, under a new id
}
"""Rows removed in a full run only: their problem shows once other stages have run."""


def descriptions() -> dict[str, str]:
    with open(HERE / "general.jsonl", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    return {r["instruction"].removeprefix("What is the ").removesuffix(" package for?"): r["output"] for r in rows}


def main() -> None:
    d = descriptions()

    def sys(text: str) -> dict[str, Any]:
        return {"role": "system", "content": text}

    def user(text: str) -> dict[str, Any]:
        return {"role": "user", "content": text}

    def bot(text: str | None, calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}

    def call(n: str, package: str, arguments: str | None = None, name: str = "apt_show") -> dict[str, Any]:
        args = arguments if arguments is not None else json.dumps({"package": package})
        return {"id": f"call_{n}", "type": "function", "function": {"name": name, "arguments": args}}

    def result(n: str, package: str) -> dict[str, Any]:
        return {"role": "tool", "tool_call_id": f"call_{n}", "content": d[package]}

    def ask(package: str) -> str:
        return f"What is the {package} package for?"

    def short(package: str) -> str:
        """The description's first sentence (its summary line): after a tool call the
        assistant sums up what the tool returned rather than repeating it."""
        return d[package].split(". ", 1)[0].rstrip(".")

    rows: list[dict[str, Any]] = []

    def add(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> None:
        row: dict[str, Any] = {"id": f"chat-{len(rows) + 1:04d}", "messages": messages}
        if tools:
            row["tools"] = tools
        rows.append(row)

    # 1-6: a system prompt and one question
    for package, system in [("curl", SYSTEM_HELP), ("git", SYSTEM_HELP), ("gdb", SYSTEM_PACKAGING),
                            ("fakeroot", SYSTEM_PACKAGING), ("cmake", SYSTEM_HELP), ("gnupg", SYSTEM_HELP)]:
        add([sys(system), user(ask(package)), bot(d[package])])
    # 7-14: several turns, with or without a system prompt
    add([sys(SYSTEM_HELP), user(ask("bash")), bot(d["bash"]), user("And the bc package?"), bot(d["bc"])])
    add([user(ask("dpkg")), bot(d["dpkg"]), user("How is dpkg-dev different?"), bot(d["dpkg-dev"])])
    add([sys(SYSTEM_PACKAGING), user(ask("build-essential")), bot(d["build-essential"]),
         user("Does it bring a C++ compiler too?"), bot("Yes: it depends on g++, so installing build-essential gives "
                                                       "you both gcc and g++, with make and the C library headers."),
         user("And what is cpp on its own?"), bot(d["cpp"])])
    add([user("I need to search text in many files. What is the findutils package for?"), bot(d["findutils"]),
         user("And file?"), bot(d["file"])])
    add([sys(SYSTEM_HELP), user(ask("fontconfig")), bot(d["fontconfig"]),
         user("Which fonts come with fonts-dejavu-core?"), bot(d["fonts-dejavu-core"])])
    add([user(ask("gettext")), bot(d["gettext"]), user("Is gettext-base enough for running translated scripts?"),
         bot(d["gettext-base"])])
    add([sys(SYSTEM_PACKAGING), user(ask("debconf")), bot(d["debconf"]), user("And debianutils?"),
         bot(d["debianutils"])])
    add([user(ask("e2fsprogs")), bot(d["e2fsprogs"]), user("What about dmsetup?"), bot(d["dmsetup"])])
    # 15-22: the assistant looks the package up with a tool first
    for i, (package, system) in enumerate([("coreutils", SYSTEM_HELP), ("ed", None), ("dbus", SYSTEM_HELP),
                                           ("dirmngr", SYSTEM_PACKAGING), ("appstream", None), ("apt", SYSTEM_HELP)]):
        n = f"{i + 1:02d}"
        lead = [sys(system)] if system else []
        add(lead + [user(f"Can you look up what {package} does?"), bot(None, [call(n, package)]),
                    result(n, package), bot(f"According to its description, {package} is: {short(package)}.")],
            tools=[APT_SHOW])
    add([sys(SYSTEM_HELP), user("What is the difference between gpg and gpg-agent?"),
         bot("Let me look both up.", [call("07", "gpg"), call("08", "gpg-agent")]),
         result("07", "gpg"), result("08", "gpg-agent"),
         bot(f"gpg is the tool itself ({short('gpg')}); gpg-agent is the {short('gpg-agent')}, which keeps your "
             "keys unlocked between gpg calls.")], tools=[APT_SHOW])
    add([user("Is avahi-daemon something I need on a laptop?"), bot(None, [call("09", "avahi-daemon")]),
         result("09", "avahi-daemon"), bot(f"It is the {short('avahi-daemon')}: it finds printers and shares on "
                                           "the local network without setup, which is handy on a laptop."),
         user("And avahi-utils?"), bot(None, [call("10", "avahi-utils")]), result("10", "avahi-utils"),
         bot(f"Those are the {short('avahi-utils')}, for looking up services from a terminal.")], tools=[APT_SHOW])
    # 23-30: one question, one answer
    for package in ["base-files", "base-passwd", "binutils", "bsdutils", "ca-certificates", "cscope", "distro-info-data",
                    "fortune-mod"]:
        add([user(ask(package)), bot(d[package])])

    # 31-41: broken, one problem each (BROKEN)
    add([{"role": "human", "content": ask("git-man")}, bot(d["git-man"])])
    add([user(ask("cups-pk-helper")), user("Sorry, I meant: what is the cups-pk-helper package for?"),
         bot(d["cups-pk-helper"])])
    add([sys(SYSTEM_HELP), user(ask("dbus-bin")), bot(d["dbus-bin"]), user("And dbus-daemon?")])
    add([user(ask("dbus-user-session")), bot("")])
    add([user(ask("cpp-12")), {"role": "tool", "tool_call_id": "call_11", "content": d["cpp-12"]}, bot(d["cpp-12"])])
    add([user("Look up gir1.2-glib-2.0 for me."), bot(None, [call("12", "gir1.2-glib-2.0")]),
         bot(d["gir1.2-glib-2.0"])], tools=[APT_SHOW])
    add([user("What does gnupg-l10n contain?"), bot(None, [call("13", "gnupg-l10n", '{"package": "gnupg-l1')]),
         result("13", "gnupg-l10n"), bot(d["gnupg-l10n"])], tools=[APT_SHOW])
    add([user("Please install gdb for me."), bot(None, [call("14", "gdb", name="apt_install")]),
         {"role": "tool", "tool_call_id": "call_14", "content": "gdb is already the newest version."},
         bot("gdb is already installed.")], tools=[APT_SHOW])
    add([user(ask("bsdextrautils")), bot(d["bsdextrautils"]), sys(SYSTEM_PACKAGING), user(ask("binutils-common")),
         bot(d["binutils-common"])])
    add([bot("Hello! Ask me about any Debian package."), user(ask("cmake-data")), bot(d["cmake-data"])])
    add([user(ask("dbus-daemon")), {"role": "bot", "content": d["dbus-daemon"]}])
    # 42-43: removed by a full run only (AFTER_CLEANING)
    add([user(ask("fortunes-min")), bot("<p><br></p>")])
    add(json.loads(json.dumps(rows[10]["messages"])))

    with open(HERE / "chat.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    print(f"wrote {len(rows)} rows to chat.jsonl ({len(BROKEN) + len(AFTER_CLEANING)} of them with a planted problem)")


if __name__ == "__main__":
    main()
