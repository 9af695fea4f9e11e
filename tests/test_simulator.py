from icpo_eval.simulator import DONT_KNOW, NO_MORE_SHARDS, RuleSimulator

sim = RuleSimulator()


def test_reveals_shards_in_order_without_questions(math_inst):
    first = sim.first_turn(math_inst)
    assert first.shard_ids == [1] and first.text == math_inst.shards[0].shard
    nxt = sim.next_turn(math_inst, {1}, "Tom has 3 apples.", asked_question=False)
    assert nxt.shard_ids == [2] and nxt.note == "next"


def test_answers_the_question_asked(math_inst):
    q = "How many apples did he buy at the market?"
    turn = sim.next_turn(math_inst, {1}, q, asked_question=True)
    assert turn.shard_ids == [3] and turn.note == "answered_question"
    q = "What color is the hat he wears?"
    assert sim.next_turn(math_inst, {1}, q, asked_question=True).shard_ids == [4]


def test_irrelevant_question_gets_dont_know_and_next_shard(math_inst):
    turn = sim.next_turn(math_inst, {1}, "Is Tom a good cook?", asked_question=True)
    assert turn.text.startswith(DONT_KNOW) and turn.shard_ids == [2]
    assert turn.note == "irrelevant_question"
    # Words found in every shard (the name) cannot pick a shard.
    assert sim.best_match(math_inst, math_inst.shards[1:], "What about Tom?") is None


def test_nothing_left_asks_for_an_answer(math_inst):
    turn = sim.next_turn(math_inst, {1, 2, 3, 4}, "Can you tell me more?", asked_question=True)
    assert turn.text == NO_MORE_SHARDS and turn.shard_ids == []
