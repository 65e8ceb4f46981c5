"""A Japanese chat, end to end at a tiny scale: a tokenizer trained on a few lines of
Japanese, pretraining, instruction tuning on Japanese conversations, and streamed answers
that never split a character."""

from __future__ import annotations

import json

from train_helpers import TINY

from scratchlm.chat import reply, stream_reply
from scratchlm.checkpoint import load_model
from scratchlm.data import prepare
from scratchlm.data.chat import render_conversation
from scratchlm.tokenizer import BPETokenizer, train_bpe
from scratchlm.tokenizer.files import write_tokenizer_dir
from scratchlm.train.config import SFT_DEFAULTS, TrainConfig
from scratchlm.train.trainer import Trainer

TEXT = [
    "空は青い。空気が青い光を多く散らすからです。",
    "水は百度で沸騰します。氷は零度で溶けます。",
    "植物は日光と水と二酸化炭素から養分を作ります。",
    "雲は小さな水滴や氷の粒でできています。",
    "月は地球のまわりを約二十七日でまわります。",
    "雷は雲の中の電気が一気に流れるときに起きます。",
]
CHATS = [
    ("空はなぜ青いの？", "空気が青い光を多く散らすからです。"),
    ("水は何度で沸騰しますか？", "水は百度で沸騰します。"),
    ("雲は何でできていますか？", "小さな水滴や氷の粒です。"),
    ("植物は何から養分を作りますか？", "日光と水と二酸化炭素です。"),
    ("月はどのくらいで地球をまわりますか？", "約二十七日です。"),
    ("雷はどうして起きるの？", "雲の中の電気が一気に流れるからです。"),
    ("こんにちは！", "こんにちは。科学について聞いてください。"),
    ("氷は何度で溶けますか？", "零度で溶けます。"),
]


def test_a_japanese_chat_trains_round_trips_and_streams_whole_characters(tmp_path):
    corpus = tmp_path / "ja.txt"
    corpus.write_text("<|endoftext|>".join(TEXT * 3), encoding="utf-8")
    vocab, merges = train_bpe(corpus, 320, ["<|endoftext|>"], num_workers=1)
    tok = BPETokenizer(vocab, merges, ["<|endoftext|>"])
    write_tokenizer_dir(tok, tmp_path / "tok")
    prepare([str(corpus)], tok, tmp_path / "data", val_fraction=0.3, workers=1, progress=False)
    common = {
        "model": dict(TINY),
        "context_length": 64,
        "device": "cpu",
        "progress": False,
        "eval_windows": 2,
        "sample_tokens": 0,
        "warmup_steps": 2,
    }
    base = Trainer(
        TrainConfig(
            data=str(tmp_path / "data"),
            out=str(tmp_path / "base"),
            preset="tiny",
            steps=20,
            batch_size=4,
            lr=3e-3,
            **common,
        )
    ).run()

    chats = tmp_path / "chats.jsonl"
    with chats.open("w", encoding="utf-8") as f:
        for question, answer in CHATS:
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    tuned = Trainer(
        TrainConfig.from_dict(
            {
                **TrainConfig().to_dict(),
                **SFT_DEFAULTS,
                **common,
                "init_from": str(base.checkpoint),
                "conversations": [str(chats)],
                "out": str(tmp_path / "sft"),
                "steps": 60,
                "lr": 1e-2,
                "batch_size": 8,
                "val_fraction": 0.2,
            }
        )
    ).run()
    assert tuned.step == 60 and tuned.loss < base.loss

    model, chat_tok = load_model(tuned.checkpoint)
    for question, answer in CHATS:  # the chat format round-trips Japanese exactly
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        ids, _ = render_conversation(messages, chat_tok)
        assert question in chat_tok.decode(ids) and answer in chat_tok.decode(ids)

    # Japanese characters are three bytes in UTF-8, and many tokens hold part of one.
    partial = [i for i in range(chat_tok.vocab_size) if "\ufffd" in chat_tok.decode([i])]
    assert partial
    right = 0
    for question, answer in CHATS:
        messages = [{"role": "user", "content": question}]
        pieces = list(stream_reply(model, chat_tok, messages, temperature=0, max_new_tokens=40))
        text = "".join(pieces)
        assert text == reply(model, chat_tok, messages, temperature=0, max_new_tokens=40)
        # The stream holds back a character's first bytes until it is whole: a piece never
        # ends in the middle of one, so no piece shows a replacement character.
        assert all("\ufffd" not in piece for piece in pieces), pieces
        right += text == answer
    assert right >= len(CHATS) // 2  # most trained answers come back word for word
