"""minimoe.tasks.chinese: Chinese numerals round-trip; the questions, the checker and the held-out split."""

from minimoe.tasks.chinese import ChineseAdditionProblem, ChineseAdditionTask, parse_chinese_numeral, to_chinese_numeral


def test_chinese_numerals_round_trip():
    assert [to_chinese_numeral(n) for n in (0, 10, 15, 110, 305, 345, 1050)] == [
        "零", "十", "十五", "一百一十", "三百零五", "三百四十五", "一千零五十"]
    assert all(parse_chinese_numeral(to_chinese_numeral(n)) == n for n in range(10000))
    assert parse_chinese_numeral("兩百") == 200
    assert parse_chinese_numeral("三百五") is None and parse_chinese_numeral("345") is None


def test_chinese_questions_and_checker():
    written = ChineseAdditionProblem(345, 120)
    cantonese = ChineseAdditionProblem(345, 120, "cantonese")
    assert written.question == "三百四十五加一百二十是多少？"
    assert cantonese.question == "三百四十五加一百二十係幾多？"
    assert written.is_correct("465") and written.is_correct("四百六十五") and not written.is_correct("四百六十")
    task = ChineseAdditionTask(zero_digits=False)
    problems = task.sample(50, "heldout")
    assert all("零" not in p.question for p in problems)
    assert {p.key for p in problems}.isdisjoint(p.key for p in task.sample(200, "train"))
