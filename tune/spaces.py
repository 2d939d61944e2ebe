"""Default search spaces, one per family, keyed by the model registry's names.

Keys are dotted paths into an experiment's config (`model.<field>` or `train.<field>`);
values are domains in the same form params.yaml uses (see tune.sweep.DOMAINS).
"""

from gm.core.registry import Registry
from gm.models.fgan import DIVERGENCES

SPACES = Registry("search space")  # family -> its default search space (a sweep without `space`)
register_space = SPACES.register


@register_space("gan")
def gan_space() -> dict:
    return {
        "model.lr_gen": {"loguniform": [5e-5, 1e-3]},
        "model.lr_critic": {"loguniform": [5e-5, 1e-3]},
        "model.n_critic": {"choice": [1, 2, 5]},
        "model.hidden": {"choice": [64, 128, 256]},
    }


@register_space("fgan")
def fgan_space() -> dict:
    return {
        "model.divergence": {"choice": sorted(DIVERGENCES)},  # which f the critic estimates
        "model.lr_gen": {"loguniform": [5e-5, 1e-3]},
        "model.lr_critic": {"loguniform": [5e-5, 1e-3]},
        "model.n_critic": {"choice": [1, 2, 5]},
    }


@register_space("wgan_gp")
def wgan_gp_space() -> dict:
    return {
        "model.gp_weight": {"loguniform": [0.1, 100.0]},  # the paper's λ = 10 sits mid-range
        "model.lr_critic": {"loguniform": [3e-5, 1e-3]},
        "model.n_critic": {"choice": [1, 3, 5]},
    }


@register_space("wgan")
def wgan_space() -> dict:
    return {
        "model.clip": {"loguniform": [1e-3, 0.1]},  # the paper's c = 0.01 sits mid-range (log scale)
        "model.lr_critic": {"loguniform": [1e-5, 3e-4]},  # around RMSProp 5e-5
        "model.n_critic": {"choice": [1, 3, 5]},
    }


@register_space("cramer")
def cramer_space() -> dict:
    return {
        "model.gp_weight": {"loguniform": [0.1, 100.0]},  # λ = 10, as for WGAN-GP
        "model.lr_gen": {"loguniform": [3e-5, 1e-3]},
        "model.lr_critic": {"loguniform": [3e-5, 1e-3]},
        "model.n_critic": {"choice": [1, 3, 5]},
    }


@register_space("vae")
def vae_space() -> dict:
    return {
        "model.beta": {"loguniform": [0.1, 4.0]},  # β < 1 trades KL for reconstruction (β-VAE)
        "model.z_dim": {"choice": [4, 8, 16]},
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("realnvp")
def realnvp_space() -> dict:
    return {
        "model.n_layers": {"choice": [4, 8, 12]},  # arch vector (toys); the multi-scale arch ignores it
        "model.scales": {"choice": [2, 3]},  # arch multiscale (images); 8×8 digits take at most 3
        "model.hidden": {"choice": [32, 64, 128]},  # around the paper's 64 feature maps (§4.1)
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("vae_flow")
def vae_flow_space() -> dict:
    return {
        "model.beta": {"loguniform": [0.1, 4.0]},
        "model.posterior_flow": {"choice": ["planar", "iaf"]},
        "model.posterior_layers": {"choice": [2, 4, 8]},
        "model.prior_flow": {"choice": ["none", "maf"]},
        "model.z_dim": {"choice": [4, 8, 16]},
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("catvae")
def catvae_space() -> dict:
    return {  # z_dim is derived from n_latent and n_categories, so it is not a knob
        "model.beta": {"loguniform": [0.1, 4.0]},
        "model.n_latent": {"choice": [10, 20, 30]},
        "model.n_categories": {"choice": [4, 10, 16]},
        "model.tau_min": {"choice": [0.3, 0.5, 0.7]},
        "model.anneal_rate": {"loguniform": [1e-5, 1e-3]},
        "model.estimator": {"choice": ["gumbel", "straight_through"]},  # score_function: a variance study (make bench ARGS=estimators), not a knob
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("vqvae")
def vqvae_space() -> dict:
    return {
        "model.beta": {"loguniform": [0.05, 2.0]},  # the commitment β; the paper's 0.25 is mid-range
        "model.codebook_size": {"choice": [16, 32, 64, 128]},
        "model.code_dim": {"choice": [8, 16, 32]},
        "model.lr": {"loguniform": [2e-4, 3e-3]},
        "model.prior_lr": {"loguniform": [3e-4, 3e-3]},
        "model.ema_decay": {"uniform": [0.9, 0.999]},  # γ = 0.99 (van den Oord et al. 2017, App. A.1)
    }


@register_space("aae")
def aae_space() -> dict:
    return {
        "model.lr": {"loguniform": [1e-4, 3e-3]},
        "model.lr_disc": {"loguniform": [5e-5, 2e-3]},
        "model.lr_gen": {"loguniform": [5e-5, 2e-3]},
        "model.z_dim": {"choice": [2, 4, 8, 16]},
        "model.n_disc": {"choice": [1, 2, 5]},
    }


@register_space("wae")
def wae_space() -> dict:
    return {
        "model.lam": {"loguniform": [0.1, 100.0]},  # λ; the paper's 10 (MMD) and 1 (GAN) sit inside
        "model.z_dim": {"choice": [4, 8, 16]},
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("avb")
def avb_space() -> dict:
    return {
        "model.lr": {"loguniform": [1e-4, 3e-3]},
        "model.lr_disc": {"loguniform": [1e-4, 3e-3]},
        "model.z_dim": {"choice": [4, 8, 16]},
        "model.noise_dim": {"choice": [4, 8, 16]},
        "model.adaptive_contrast": {"choice": [False, True]},
    }


@register_space("nice")
def nice_space() -> dict:
    return {
        "model.n_layers": {"choice": [4, 6, 8]},
        "model.hidden": {"choice": [128, 256, 512]},
        "model.depth": {"choice": [2, 3, 4]},
        "model.prior": {"choice": ["gaussian", "logistic"]},
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("glow")
def glow_space() -> dict:
    return {  # levels <= 3 fits 8x8 digits; on toys levels only multiplies the steps
        "model.levels": {"choice": [1, 2, 3]},
        "model.steps_per_level": {"choice": [4, 8, 16]},
        "model.hidden": {"choice": [32, 64, 128]},
        "model.coupling": {"choice": ["affine", "additive"]},
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("maf")
def maf_space() -> dict:
    return {
        "model.n_layers": {"choice": [3, 5, 10]},
        "model.hidden": {"choice": [64, 128, 256]},
        "model.depth": {"choice": [1, 2]},
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("iaf")
def iaf_space() -> dict:
    return {
        "model.n_layers": {"choice": [2, 4, 8]},
        "model.hidden": {"choice": [32, 64, 128]},
        "model.depth": {"choice": [1, 2]},
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("planar")
def planar_space() -> dict:
    return {
        "model.kind": {"choice": ["planar", "radial"]},
        "model.n_layers": {"choice": [8, 16, 32]},
        "model.lr": {"loguniform": [1e-3, 3e-2]},
    }


@register_space("pixelcnn")
def pixelcnn_space() -> dict:
    return {
        "model.hidden": {"choice": [32, 64, 128]},
        "model.depth": {"choice": [2, 4, 6, 8]},  # mask-B residual blocks
        "model.kernel": {"choice": [3, 5, 7]},  # mask-A first layer (van den Oord 2016a: 7x7)
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("gated_pixelcnn")
def gated_pixelcnn_space() -> dict:
    return {
        "model.hidden": {"choice": [32, 64, 128]},
        "model.depth": {"choice": [2, 4, 6, 8]},  # gated layers
        "model.kernel": {"choice": [3, 5, 7]},
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("pixelcnnpp")
def pixelcnnpp_space() -> dict:
    return {
        "model.hidden": {"choice": [32, 64, 96]},
        "model.depth": {"choice": [1, 2, 3]},  # gated resnet blocks per resolution
        "model.components": {"choice": [3, 5, 10]},  # logistic mixture components (Salimans 2017: 10)
        "model.dropout": {"uniform": [0.0, 0.5]},  # Salimans 2017: 0.5
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("acgan")
def acgan_space() -> dict:
    return {
        "model.class_weight": {"loguniform": [0.1, 10.0]},  # λ of the auxiliary class term; the paper's 1 mid-range
        "model.lr_gen": {"loguniform": [5e-5, 1e-3]},
        "model.lr_critic": {"loguniform": [5e-5, 1e-3]},
        "model.hidden": {"choice": [64, 128, 256]},
    }


@register_space("sagan")
def sagan_space() -> dict:
    return {
        "model.lr_critic": {"loguniform": [1e-4, 1e-3]},  # TTUR: the paper's 4e-4 mid-range
        "model.lr_gen": {"loguniform": [3e-5, 3e-4]},  # the paper's 1e-4
        "model.hidden": {"choice": [16, 32, 64]},
    }


@register_space("biggan")
def biggan_space() -> dict:
    return {
        "model.lr_critic": {"loguniform": [5e-5, 1e-3]},  # the paper's 2e-4 mid-range
        "model.lr_gen": {"loguniform": [1e-5, 2e-4]},  # the paper's 5e-5
        "model.ortho_beta": {"loguniform": [1e-5, 1e-3]},  # §3.1: β = 1e-4
        "model.hidden": {"choice": [16, 32, 64]},
    }


@register_space("progan")
def progan_space() -> dict:
    return {
        "model.lr_gen": {"loguniform": [3e-4, 3e-3]},  # the paper's 1e-3 mid-range
        "model.lr_critic": {"loguniform": [3e-4, 3e-3]},
        "model.phase_steps": {"choice": [0, 100, 250, 500]},  # steps per growing phase (0: no growing)
        "model.hidden": {"choice": [32, 64, 128]},
    }


@register_space("stylegan")
def stylegan_space() -> dict:
    return {
        "model.r1_gamma": {"loguniform": [0.1, 100.0]},  # the paper's γ = 10 (FFHQ) mid-range (log scale)
        "model.mixing_prob": {"choice": [0.0, 0.5, 0.9]},  # off, half, the paper's 0.9
        "model.mapping_layers": {"choice": [1, 2, 4, 8]},  # the paper's 8
        "model.lr_gen": {"loguniform": [3e-4, 3e-3]},  # around Adam 1e-3 (Appendix C)
        "model.lr_critic": {"loguniform": [3e-4, 3e-3]},
    }


@register_space("wavenet")
def wavenet_space() -> dict:
    return {
        "model.lr": {"loguniform": [3e-4, 3e-3]},  # Adam around 1e-3 (the paper gives no settings)
        "model.residual_channels": {"choice": [16, 32, 64]},  # dilation channels follow at their default
        "model.layers_per_stack": {"choice": [6, 8, 10]},  # dilations up to 32, 128, 512 (§2.1)
        "model.stacks": {"choice": [1, 2, 3]},
    }


@register_space("pixelrnn")
def pixelrnn_space() -> dict:
    return {
        "model.arch": {"choice": ["row_lstm", "diagonal_bilstm"]},  # van den Oord 2016a, §3.1 / §3.2
        "model.hidden": {"choice": [16, 32, 64]},  # h; MNIST: 16 (Table 4)
        "model.depth": {"choice": [1, 2, 4, 7]},  # LSTM layers; MNIST: 7 (Table 4)
        "model.dropout": {"uniform": [0.0, 0.5]},
        "model.lr": {"loguniform": [3e-4, 3e-3]},
    }


@register_space("vqvae2")
def vqvae2_space() -> dict:
    return {
        "model.beta": {"loguniform": [0.05, 2.0]},  # the commitment β; the paper's 0.25 is mid-range
        "model.codebook_size_top": {"choice": [16, 32, 64, 128]},  # the paper's 512 per level is for ImageNet
        "model.codebook_size_bottom": {"choice": [16, 32, 64, 128]},
        "model.code_dim": {"choice": [8, 16, 32]},
        "model.lr": {"loguniform": [2e-4, 3e-3]},
        "model.prior_lr": {"loguniform": [3e-4, 3e-3]},
        "model.ema_decay": {"uniform": [0.9, 0.999]},  # γ = 0.99 (VQ-VAE App. A.1; VQ-VAE-2 §3.1)
    }


@register_space("nade")
def nade_space() -> dict:
    return {
        "model.hidden": {"choice": [100, 250, 500]},  # Larochelle & Murray 2011, §5: 500
        "model.activation": {"choice": ["sigmoid", "relu"]},  # 2011: sigmoid; Uria et al. 2014: ReLU
        "model.weight_decay": {"choice": [0.0, 1e-4, 1e-3]},  # a 1,257-image training set overfits
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }


@register_space("made")
def made_space() -> dict:
    return {
        "model.hidden": {"choice": [250, 500, 1000]},  # Germain et al. 2015, §6: 500
        "model.depth": {"choice": [1, 2]},  # 2015, Table 6: one or two hidden layers
        "model.masks": {"choice": [1, 8, 32]},  # connectivity-agnostic pool and test ensemble (§3.4, Table 6)
        "model.lr": {"loguniform": [1e-4, 3e-3]},
    }
