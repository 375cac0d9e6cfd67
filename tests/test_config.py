import pytest

import config
from config import ConfigError, load_config


def test_spec_defaults():
    c = load_config(environ={})
    assert (c.IMG_SIZE, c.PATCH_SIZE, c.EMBED_DIM, c.DEPTH, c.NUM_HEADS, c.MLP_RATIO) == (224, 16, 384, 12, 6, 4.0)
    assert (c.DECODER_EMBED_DIM, c.DECODER_DEPTH, c.DECODER_NUM_HEADS) == (256, 4, 8)
    assert (c.MASK_RATIO, c.N_EPOCHS, c.BATCH_SIZE, c.LEARNING_RATE, c.WEIGHT_DECAY) == (0.75, 200, 16, 1.5e-4, 0.05)
    assert (c.LAMBDA_FINE, c.LAMBDA_COARSE) == (1.0, 0.5)
    assert c.model_config() == config.ModelConfig()


def test_environment_and_flags_override_in_order():
    parser = config.add_config_args(__import__("argparse").ArgumentParser())
    env = {"MIRAM_N_EPOCHS": "2", "MIRAM_DEPTH": "2", "MIRAM_DATA_PATH": "/d", "MIRAM_OUTPUT_PATH": "/o"}
    c = load_config(parser.parse_args([]), environ=env)
    assert (c.N_EPOCHS, c.DEPTH, c.DATASET_PATH, c.OUTPUT_PATH) == (2, 2, "/d", "/o")
    c = load_config(parser.parse_args(["--n-epochs", "5"]), environ=env)
    assert c.N_EPOCHS == 5 and c.DEPTH == 2


def test_preset_then_env():
    c = load_config(environ={"MIRAM_PRESET": "demo", "MIRAM_N_EPOCHS": "3"})
    assert c.EMBED_DIM == config.PRESETS["demo"]["EMBED_DIM"] and c.N_EPOCHS == 3


@pytest.mark.parametrize("env, name", [
    ({"MIRAM_N_EPOCHS": "two"}, "MIRAM_N_EPOCHS"),
    ({"MIRAM_MASK_RATIO": "1.5"}, "MASK_RATIO"),
    ({"MIRAM_EMBED_DIM": "100", "MIRAM_NUM_HEADS": "3"}, "EMBED_DIM"),
    ({"MIRAM_IMG_SIZE": "100"}, "IMG_SIZE"),
    ({"MIRAM_BATCH_SIZE": "0"}, "BATCH_SIZE"),
    ({"MIRAM_NOT_A_SETTING": "1"}, "MIRAM_NOT_A_SETTING"),
    ({"MIRAM_PRESET": "huge"}, "MIRAM_PRESET"),
    ({"MIRAM_CLS_LABEL_FRACTION": "0"}, "CLS_LABEL_FRACTION"),
    ({"MIRAM_CLS_PATCH_WEIGHT": "-1"}, "CLS_PATCH_WEIGHT"),
    ({"MIRAM_MATMUL": "fast"}, "MATMUL"),
    # each setting within its bounds, together a model of billions of parameters
    ({"MIRAM_EMBED_DIM": "4096", "MIRAM_DEPTH": "64", "MIRAM_NUM_HEADS": "64", "MIRAM_MLP_RATIO": "16"}, "G parameters"),
])
def test_bad_values_are_refused_naming_the_setting(env, name):
    with pytest.raises(ConfigError, match=name):
        load_config(environ=env)


def test_linear_lr_scaling():
    c = load_config(environ={"MIRAM_BATCH_SIZE": "8", "MIRAM_ACCUM_STEPS": "4"})
    assert c.effective_batch() == 32 and c.effective_lr() == pytest.approx(3e-4)


def test_cpu_name_tells_cpus_of_one_model_name_apart():
    from records import cpu_name
    zen3 = "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma\n\n"
    zen5 = zen3.replace(": 25", ": 26").replace("avx2 fma", "avx2 fma avx512f avx512_bf16")
    assert cpu_name(zen3) == "AMD EPYC (family 25 model 1, AVX2)"
    assert cpu_name(zen5) == "AMD EPYC (family 26 model 1, AVX-512 BF16)"
    assert cpu_name("model name\t: Some CPU\n") == "Some CPU"


def test_the_configuration_is_frozen_once_resolved():
    import dataclasses
    c = load_config(environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.IMG_SIZE = 128
    # a checkpoint's architecture is adopted into a new configuration, before anything runs
    other = config.ModelConfig(img_size=64, embed_dim=32, depth=2, num_heads=2)
    adopted = c.adopt(other, AMP=True)
    assert (adopted.IMG_SIZE, adopted.EMBED_DIM, adopted.DEPTH, adopted.AMP) == (64, 32, 2, True)
    assert adopted.model_config() == other and c.IMG_SIZE == 224


def test_the_parameter_count_the_settings_imply_is_the_models():
    from models import MIRAM
    for m in (config.ModelConfig(img_size=64, embed_dim=32, depth=2, num_heads=2, decoder_embed_dim=32,
                                 decoder_depth=1, decoder_num_heads=2), load_config(environ={"MIRAM_PRESET": "demo"}).model_config()):
        real = sum(p.numel() for p in MIRAM(m).parameters())
        assert config.parameter_count(m) == real


def test_every_setting_has_a_meaning_and_readers():
    assert len(config.SETTINGS) > 40
    for name, f in config.SETTINGS.items():
        assert len(f.metadata["help"]) > 10, name
        assert f.metadata["read_by"] and set(f.metadata["read_by"]) <= set(config.SCRIPTS), name


def test_help_prints_the_meaning_of_each_setting_a_script_reads(capsys):
    import classify
    import enhance
    with pytest.raises(SystemExit):
        enhance.get_args_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--slice-axis" in text and "cut along this axis" in text
    assert "--cls-lr" not in text and "--n-epochs" not in text  # settings enhance.py does not read
    flags = {a.dest for a in classify.get_args_parser()._actions}
    assert {"CLS_LR", "LAYER_DECAY", "SEED"} <= flags and not flags & {"N_EPOCHS", "INPAINT_LR", "ADAPT_STEPS"}
