"""Tests of the ``noise`` stage: each rule, what it must leave alone, counters, config
checks, field-by-field cleaning of instruction and chat data, nulls and ``changed_by``."""

from __future__ import annotations

import pyarrow as pa
import pytest
from pydantic import ValidationError

from pipeline.schema import MESSAGE_TYPE, DatasetInfo
from pipeline.stages.noise import BUILTIN_RULES, NoiseConfig, NoiseStage, resident_id_is_valid
from pipeline.stages.registry import stage_class

TEXT = DatasetInfo("text", ("text",))
INSTRUCTION = DatasetInfo("instruction", ("prompt", "response"))
CHAT = DatasetInfo("instruction", ("messages",))


def make_table(changed_by: list[str] | None = None, **columns: pa.Array | list) -> pa.Table:
    """A canonical table: the given role columns plus ``row_id`` and ``changed_by``."""
    n = len(next(iter(columns.values())))
    data: dict[str, pa.Array | list] = {"row_id": [f"r{i}" for i in range(n)]}
    for name, values in columns.items():
        data[name] = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    data["changed_by"] = changed_by if changed_by is not None else [""] * n
    return pa.table(data)


def run(texts: list[str | None], info: DatasetInfo = TEXT, **config):
    stage = NoiseStage(NoiseConfig(**config), info)
    return stage.apply(make_table(text=texts))


def clean(text: str | None, **config) -> str | None:
    return run([text], **config).kept.column("text")[0].as_py()


def only(rule: str) -> dict:
    """Config with every built-in rule off except ``rule``."""
    return {"rules": {name: name == rule for name in BUILTIN_RULES}}


# --- html_tags ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<p>Hello <b>world</b></p><p>Next</p>", "Hello world\n\nNext"),
        ('See <a href="https://x.org/a">the docs</a> now.', "See the docs now."),
        ("one<br/>two<br>three", "one\ntwo\nthree"),
        ("<ul><li>a</li><li>b</li></ul>", "a\n\nb"),
        ("<table><tr><td>1</td><td>2</td></tr></table>", "1 2"),
        ("<script>var x = 1 < 2;</script>Text<style>p { color: red }</style> here", "Text here"),
        ("<!-- nav --><!DOCTYPE html>Body", "Body"),
        ("<item>apple</item> <item>pear</item>", "apple pear"),
        ('<widget id="3"/>Done', "Done"),
        ("<DIV>Upper</DIV>", "Upper"),
    ],
)
def test_html_tags_are_stripped(text, expected):
    assert clean(text, **only("html_tags")) == expected


@pytest.mark.parametrize(
    "text",
    [
        "3 < 5 and 7 > 2",
        "std::vector<int> v;",
        "#include <iostream>",
        "List<T> items = new ArrayList<T>();",
        "Map<String, Object> m; Foo<S> s; Bar<P> p;",
        "if a<b and b <= c: pass",
        "Use the <Enter> key",
    ],
)
def test_html_tags_leave_comparisons_and_generics_alone(text):
    out = run([text], **only("html_tags"))
    assert out.kept.column("text")[0].as_py() == text
    assert out.counters["html_tags"] == 0


def test_unknown_tag_names_need_a_closing_tag_in_the_same_string():
    texts = ["<item>apple</item>", "template <item> only"]
    out = run(texts, **only("html_tags"))
    assert out.kept.column("text").to_pylist() == ["apple", "template <item> only"]


# --- html_entities -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("a &lt; b &gt; c &quot;q&quot; it&#39;s", 'a < b > c "q" it\'s'),
        ("one&nbsp;two", "one two"),
        ("&eacute;t&eacute; &mdash; &#8212; &#x41;", "été — — A"),
        ("write &amp;lt; for <", "write &lt; for <"),  # decoded once, not twice
        ("&copy; 2020 &amp; more", "© 2020 & more"),  # rare + common in one string
    ],
)
def test_html_entities_are_decoded(text, expected):
    assert clean(text, **only("html_entities")) == expected


@pytest.mark.parametrize("text", ["AT&T and Q&A", "a && b; c & d", "&notanentity; stays", "R&D;"])
def test_html_entities_leave_ampersands_alone(text):
    out = run([text], **only("html_entities"))
    assert out.kept.column("text")[0].as_py() == text
    assert out.counters["html_entities"] == 0


def test_html_entities_count_decoded_entities_only():
    out = run(["&amp; &lt;", "&eacute; &bogus;", "none"], **only("html_entities"))
    assert out.counters["html_entities"] == 3


# --- urls and emails ---------------------------------------------------------------


def test_urls_become_placeholder_and_keep_sentence_punctuation():
    texts = [
        "Visit https://example.com/a?b=1&c=2. Then http://x.org, or www.test.org!",
        "(see https://en.example.org/wiki/Page)",
        "file.txt, e.g. this, v1.2 and example.com stay",
    ]
    out = run(texts, **only("urls"))
    assert out.kept.column("text").to_pylist() == [
        "Visit <URL>. Then <URL>, or <URL>!",
        "(see <URL>)",
        "file.txt, e.g. this, v1.2 and example.com stay",
    ]
    assert out.counters["urls"] == 4


def test_emails_become_placeholder():
    texts = ["Mail john.doe+news@example.co.uk or SALES@Example.com.", "@username, @property and user@localhost"]
    out = run(texts, **only("emails"))
    assert out.kept.column("text").to_pylist() == [
        "Mail <EMAIL> or <EMAIL>.",
        "@username, @property and user@localhost",
    ]
    assert out.counters["emails"] == 2


def test_placeholders_are_configurable_and_taken_literally():
    out = run(
        ["at a@b.io via https://x.io"],
        **only("emails") | {"email_placeholder": r"[mail\1]"},
    )
    assert out.kept.column("text")[0].as_py() == r"at [mail\1] via https://x.io"


def test_empty_placeholder_removes_and_tidies():
    assert clean("write to  a@b.io  today", **only("emails"), email_placeholder="") == "write to today"


# --- phones ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone",
    [
        "+1 (555) 123-4567",
        "+1-555-123-4567",
        "+44 20 7946 0958",
        "+442079460958",
        "+33 1 23 45 67 89",
        "(555) 123-4567",
        "555-123-4567",
        "555.123.4567",
        "1-800-555-1234",
    ],
)
def test_phones_become_placeholder(phone):
    assert clean(f"Call {phone} now.", **only("phones")) == "Call <PHONE> now."


@pytest.mark.parametrize(
    "text",
    [
        "In 2021 it cost $1,299.",
        "Born 1984-05-12, at 10:30.",
        "Pi is 3.14159 and e is 2.71828.",
        "Coordinates +40.7128, -74.0060",
        "Score +3 points, ISBN 978-3-16-148410-0",
        "Card 4111-1111-1111-1111, IP 192.168.100.1",
        "Population 12 345 678 in 555-1234 homes",
    ],
)
def test_phones_leave_numbers_alone(text):
    out = run([text], **only("phones"))
    assert out.kept.column("text")[0].as_py() == text
    assert out.counters["phones"] == 0


# --- boilerplate -------------------------------------------------------------------


def test_boilerplate_lines_are_removed():
    text = "\n".join(
        [
            "Intro paragraph.",
            "Click here to subscribe!",
            "Copyright © 2021 Acme Inc.",
            "© 2019-2021 Example Media. All rights reserved.",
            "Share on Facebook",
            "Read more »",
            "Body text.",
            "Privacy Policy | Terms of Use | Contact Us",
            "  - Cookie policy",
            "This website uses cookies to improve your experience.",
            "Subscribe to our newsletter",
            "Follow us on Twitter!",
            "* Advertisement",
            "Skip to main content",
            "BACK TO TOP",
        ]
    )
    out = run([text], **only("boilerplate"))
    assert out.kept.column("text")[0].as_py() == "Intro paragraph.\nBody text."
    assert out.counters["boilerplate"] == 13


@pytest.mark.parametrize(
    "text",
    [
        "If you want to read more about it, ask a librarian.",
        "Copyright law protects the authors of original works.",
        "We share on Facebook what we like, and we like many things about our neighbours and friends,"
        " and that is why the page keeps growing every single week without any advertising at all.",
        "The contract said: " + "all rights reserved to the owner " * 6,
        "Read more books.",
    ],
)
def test_boilerplate_leaves_prose_alone(text):
    out = run([text], **only("boilerplate"))
    assert out.kept.column("text")[0].as_py() == text
    assert out.counters["boilerplate"] == 0


# --- repeated_punctuation ----------------------------------------------------------


def test_repeated_punctuation_collapses_long_runs():
    texts = ["Wow!!!! Really???? Wait..... ok,,,, x", "Title\n=======\n|-------|------|", "Sign: ______"]
    out = run(texts, **only("repeated_punctuation"))
    assert out.kept.column("text").to_pylist() == [
        "Wow! Really? Wait... ok, x",
        "Title\n===\n|---|---|",
        "Sign: ___",
    ]
    assert out.counters["repeated_punctuation"] == 8


@pytest.mark.parametrize(
    "text", ["Mr. Smith... said no!!! Why???", "###### Heading", "````python", "a -- b --- c", "~~~~"]
)
def test_repeated_punctuation_leaves_short_runs_and_markdown_alone(text):
    out = run([text], **only("repeated_punctuation"))
    assert out.kept.column("text")[0].as_py() == text
    assert out.counters["repeated_punctuation"] == 0


# --- whitespace, counters, changed_by, nulls -----------------------------------------


def test_removals_leave_no_stray_whitespace_but_untouched_rows_keep_theirs():
    texts = [
        "<p> Hello </p>\n\n\n\n<p>there  <b>you</b> </p>  ",
        "def f():\n    return  1\n\n\n\nx",
        "Click here\n    indented line",
    ]
    out = run(texts)
    assert out.kept.column("text").to_pylist() == [
        "Hello\n\nthere you",
        "def f():\n    return  1\n\n\n\nx",
        "indented line",
    ]


def test_counters_per_rule_and_changed_rows():
    texts = [
        "<b>Mail</b> me: a@b.io or c@d.org!!!!",
        "Plain text stays.",
        None,
        "Call 555-123-4567 &amp; see https://x.io\nRead more",
    ]
    out = run(texts)
    assert dict(out.counters) == {
        "html_tags": 2,
        "html_entities": 1,
        "urls": 1,
        "emails": 2,
        "resident_ids": 0,
        "phones": 1,
        "phones_cn": 0,
        "phones_tw": 0,
        "boilerplate": 1,
        "repeated_punctuation": 1,
    }
    assert out.kept.column("text").to_pylist() == [
        "Mail me: <EMAIL> or <EMAIL>!",
        "Plain text stays.",
        None,
        "Call <PHONE> & see <URL>",
    ]
    assert out.kept.column("changed_by").to_pylist() == ["noise", "", "", "noise"]
    assert out.changed == 2


def test_changed_by_is_appended_to_earlier_stages():
    table = make_table(text=["<i>x</i>", "y"], changed_by=["normalize", "normalize"])
    out = NoiseStage(NoiseConfig(), TEXT).apply(table)
    assert out.kept.column("changed_by").to_pylist() == ["normalize,noise", "normalize"]


def test_never_removes_rows_and_keeps_row_ids():
    out = run(["<p></p>", "Click here to subscribe", "ok"])
    assert out.kept.column("text").to_pylist() == ["", "", "ok"]
    assert out.kept.column("row_id").to_pylist() == ["r0", "r1", "r2"]
    assert out.removed.num_rows == 0
    assert {"reason", "detail"} <= set(out.removed.column_names)


def test_empty_table():
    out = run([])
    assert out.kept.num_rows == 0 and out.changed == 0
    assert out.counters["html_tags"] == 0


def test_nulls_stay_null():
    out = run([None, "<b>x</b>", None])
    assert out.kept.column("text").to_pylist() == [None, "x", None]
    assert out.kept.column("changed_by").to_pylist() == ["", "noise", ""]


def test_second_pass_changes_nothing():
    texts = ["<p>Mail a@b.io, call +44 20 7946 0958, see www.x.org &amp; more!!!!</p>\nRead more"]
    first = run(texts).kept
    again = NoiseStage(NoiseConfig(), TEXT).apply(first)
    assert first.column("text")[0].as_py() == "Mail <EMAIL>, call <PHONE>, see <URL> & more!"
    assert again.changed == 0
    assert again.kept.column("text").to_pylist() == first.column("text").to_pylist()


# --- config ------------------------------------------------------------------------


def test_disabled_rule_does_nothing_and_is_not_counted():
    out = run(["a@b.io <b>x</b>"], rules={"emails": False})
    assert out.kept.column("text")[0].as_py() == "a@b.io x"
    assert "emails" not in out.counters
    assert out.counters["html_tags"] == 2


def test_custom_rule_runs_after_builtins_with_groups():
    out = run(
        ["Order #12345 from a@b.io", "nothing"],
        custom=[
            {"name": "order_ids", "pattern": r"#(\d+)", "replacement": r"<ORDER \1>"},
            {"name": "email_tag", "pattern": "<EMAIL>", "replacement": "[email]"},
        ],
    )
    assert out.kept.column("text").to_pylist() == ["Order <ORDER 12345> from [email]", "nothing"]
    assert out.counters["order_ids"] == 1
    assert out.counters["email_tag"] == 1
    assert out.counters["emails"] == 1


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ({"name": "broken", "pattern": "(unclosed"}, "missing )"),
        ({"name": "lookbehind", "pattern": "(?<=a)b"}, "not valid RE2"),
        ({"name": "backref", "pattern": r"(a)\1"}, "not valid RE2"),
        ({"name": "bad_group", "pattern": "a", "replacement": r"\1"}, "not valid RE2"),
        ({"name": "empty_match", "pattern": "x*"}, "matches the empty string"),
    ],
)
def test_invalid_custom_rule_is_rejected_with_its_name(rule, why):
    with pytest.raises(ValidationError) as error:
        NoiseConfig(custom=[rule])
    assert repr(rule["name"]) in str(error.value)
    assert why in str(error.value)


@pytest.mark.parametrize(
    "config",
    [
        {"rules": {"html_tag": False}},  # typo of a rule name
        {"rule": {"urls": False}},
        {"custom": [{"name": "x", "pattern": "y", "flags": "i"}]},
        {"custom": [{"name": "emails", "pattern": "y"}]},  # clashes with a built-in counter
        {"custom": [{"name": "x", "pattern": "a"}, {"name": "x", "pattern": "b"}]},
        {"custom": [{"name": "", "pattern": "a"}]},
    ],
)
def test_bad_config_is_rejected(config):
    with pytest.raises(ValidationError):
        NoiseConfig(**config)


def test_registry_finds_the_stage():
    assert stage_class("noise") is NoiseStage
    assert NoiseStage.name == "noise" and NoiseStage.config_model is NoiseConfig


# --- instruction and chat data -----------------------------------------------------


def test_instruction_fields_are_cleaned_separately():
    table = make_table(
        prompt=["<p>Fix my code:</p><p>List<item> xs;</p>", "Plain question?", None],
        response=["Use List<item> xs; it compiles.\nRead more", "Email a@b.io", "ok"],
    )
    out = NoiseStage(NoiseConfig(), INSTRUCTION).apply(table)
    # The prompt holds closing tags, so its unknown <item> goes; the response holds
    # none, so its List<item> is code and stays. Each field is trimmed on its own.
    assert out.kept.column("prompt").to_pylist() == ["Fix my code:\n\nList xs;", "Plain question?", None]
    assert out.kept.column("response").to_pylist() == ["Use List<item> xs; it compiles.", "Email <EMAIL>", "ok"]
    assert out.kept.column("changed_by").to_pylist() == ["noise", "noise", ""]


def test_classification_label_is_not_touched():
    table = make_table(text=["<b>good</b>"], label=["<b>pos</b>"])
    out = NoiseStage(NoiseConfig(), DatasetInfo("classification", ("text", "label"))).apply(table)
    assert out.kept.column("text")[0].as_py() == "good"
    assert out.kept.column("label")[0].as_py() == "<b>pos</b>"


def test_chat_messages_are_cleaned_per_message():
    messages = pa.array(
        [
            [
                {"role": "user", "content": "Reach me at a@b.io!!!!"},
                {"role": "assistant", "content": "<p>Sure.</p>\nClick here to subscribe"},
            ],
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}],
            None,
            [{"role": "user", "content": "std::vector<int> v;"}],
        ],
        MESSAGE_TYPE,
    )
    out = NoiseStage(NoiseConfig(), CHAT).apply(make_table(messages=messages))
    column = out.kept.column("messages")
    assert column.type == MESSAGE_TYPE
    assert column.to_pylist() == [
        [{"role": "user", "content": "Reach me at <EMAIL>!"}, {"role": "assistant", "content": "Sure."}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}],
        None,
        [{"role": "user", "content": "std::vector<int> v;"}],
    ]
    assert out.kept.column("changed_by").to_pylist() == ["noise", "", "", ""]
    assert out.counters["emails"] == 1
    assert out.counters["boilerplate"] == 1


# --- Chinese phone and resident ID numbers ---------------------------------------------


@pytest.mark.parametrize(
    ("rule", "text", "expected"),
    [
        ("phones_cn", "请拨打13812345678联系", "请拨打<PHONE>联系"),
        ("phones_cn", "手机：138-1234-5678，或 138 1234 5678。", "手机：<PHONE>，或 <PHONE>。"),
        ("phones_cn", "座机010-12345678，深圳(0755) 1234567。", "座机<PHONE>，深圳<PHONE>。"),
        ("phones_tw", "手機 0912-345-678 或 0912 345 678 或 0912345678。", "手機 <PHONE> 或 <PHONE> 或 <PHONE>。"),
        ("phones_tw", "台北電話 (02) 2345-6789，台中 04-2234-5678。", "台北電話 <PHONE>，台中 <PHONE>。"),
    ],
)
def test_chinese_national_phone_numbers_are_masked(rule, text, expected):
    out = run([text], **only(rule))
    assert out.kept.column("text")[0].as_py() == expected
    assert out.counters[rule] == expected.count("<PHONE>")


def test_numbers_with_a_country_code_stay_with_phones():
    text = "大陆 +86 138 1234 5678，台湾 +886 912 345 678，香港 +852 9123 4567。"
    out = run([text])
    assert out.kept.column("text")[0].as_py() == "大陆 <PHONE>，台湾 <PHONE>，香港 <PHONE>。"
    assert (out.counters["phones"], out.counters["phones_cn"], out.counters["phones_tw"]) == (3, 0, 0)


@pytest.mark.parametrize(
    "text",
    [
        "共有 1381234567 人，收入 2021 年 12345678 元。",  # ten digits; a bare eight-digit amount
        "订单号 138123456789 已发货。",  # twelve digits
        "Order 13812345678 shipped to 010-12345678.",  # Latin text: national formats are not looked for
    ],
)
def test_chinese_phone_rules_leave_other_numbers_alone(text):
    out = run([text])
    assert out.kept.column("text")[0].as_py() == text
    assert out.counters["phones_cn"] == out.counters["phones_tw"] == 0


def test_resident_ids_are_masked_only_when_the_check_digit_is_right():
    assert resident_id_is_valid("11010519491231002X") and resident_id_is_valid("110101199003074514")
    assert not resident_id_is_valid("110101199003074515")
    text = "身份证号11010519491231002x，错号11010519491231002Y，另一个110101199003074514。ID 110101199003074514."
    out = run([text], **only("resident_ids"))
    assert out.kept.column("text")[0].as_py() == "身份证号<ID>，错号11010519491231002Y，另一个<ID>。ID <ID>."
    assert out.counters["resident_ids"] == 3


def test_resident_ids_leave_other_long_numbers_alone():
    texts = [
        "序列号 110101199013074514",  # month 13
        "编号 9101011990030745141",  # nineteen digits
        "110101199003074514a",  # part of a longer token
    ]
    out = run(texts, **only("resident_ids"))
    assert out.kept.column("text").to_pylist() == texts and out.counters["resident_ids"] == 0


def test_id_placeholder_is_configurable():
    assert clean("证件 110101199003074514", id_placeholder="[身份证]") == "证件 [身份证]"
