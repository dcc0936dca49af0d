"""The papers' result tables, transcribed: values, where they come from, and how each column maps to ours.

The two papers (``../shared/papers/``, plain-text extractions) print three tables of numbers:

==========  ==========================================================  ==========================
key         what                                                        source
==========  ==========================================================  ==========================
``table1``  paper 002, TABLE 1 "Comparison of results": RMSE ... Time,   Li, Zhao, Lv & Pan 2021
            ten tests of the CNN method, modality pair not stated
``table2``  paper 002, TABLE 2 "Comparison of results": Q0, QE, QW,      Li, Zhao, Lv & Pan 2021
            Q^AB/F for CT and MRI and for MRI and SPECT, ten tests each
``table3``  paper 000, Table 3 "Comparison of results in CT and MRI      Li, Zhao, Lv & Li 2020
            images": EOG ... TIME, ten tests of the DBM method
==========  ==========================================================  ==========================

(Paper 000's Tables 1 and 2 are galleries of training images, with no numbers.) Each paper
prints only its own method's values; neither prints numbers for the methods it compares
with (SR of Yin et al. 2013; DenseFuse and Liu et al. 2017).

Every value below was copied from the extraction and checked cell by cell against it
(``Testing/test_experiments.py`` re-reads the text files when they are present). The page
is not given: the extractions carry no page breaks, so the source names the file and its
lines instead. What the transcription found odd in the printed numbers is kept in each
table's ``remarks`` rather than "corrected".

Column mapping (``PaperColumn.metric``): the README's metric table -- "Entropy" is our
cross entropy ``CE``, "ENT" our entropy ``EN``, "H" our conditional entropy ``H``, "REL" our
relative L2 error; ``scale`` multiplies our value (0-255 scale, times in seconds) onto the
paper's scale where the printed numbers show which scale it is (paper 002's Table 1 is on
[0, 1]: its PSNR is 20 log10(1 / RMSE)).
"""

from __future__ import annotations

from dataclasses import dataclass

from .data import PAPER_PAIRS, pair_label

#: Suffix of the columns that hold the paper's printed value beside ours (``RMSE [paper]``).
PAPER_SUFFIX = " [paper]"

#: Our labels of the papers' two modality pairs (MRI = T1-weighted: the papers do not say which).
CT_MRI, MRI_SPECT = (pair_label(p) for p in PAPER_PAIRS)
#: The column of the fusion time in our tables (seconds).
TIME = "time_s"
#: Paper 002's Table 1 is on the [0, 1] intensity scale; ours on 0-255.
UNIT_SCALE = 1.0 / 255.0

PAPER_000 = ("Li Y, Zhao J, Lv Z, Li J (2020). Medical image fusion method by deep learning. "
             "International Journal of Cognitive Computing in Engineering. doi:10.1016/j.ijcce.2020.12.004")
PAPER_002 = ("Li Y, Zhao J, Lv Z, Pan Z (2021). Multimodal Medical Supervised Image Fusion Method by CNN. "
             "Frontiers in Neuroscience 15:638976. doi:10.3389/fnins.2021.638976")


@dataclass(frozen=True)
class PaperColumn:
    """One printed column and the metric of ours that fills it.

    :param label: the header as printed (our CSV column; the paper's value is ``"<label> [paper]"``).
    :param metric: our metric key (:data:`MedFusionLib.metrics.METRICS`) or :data:`TIME`.
    :param scale: multiplies our value onto the paper's scale (1: same scale).
    :param note: what differs between their column and ours (empty: nothing known).
    """

    label: str
    metric: str
    scale: float = 1.0
    note: str = ""


@dataclass(frozen=True)
class PaperBlock:
    """The rows of one modality pair of a table (Test 1..10).

    :param paper_pair: the pair as the paper names it (``"not stated"`` when it does not).
    :param pairs: our pair labels that fill these rows (two when the paper does not say which).
    :param values: one tuple per test, one value per column, as printed.
    """

    paper_pair: str
    pairs: tuple[str, ...]
    values: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class PaperTable:
    """A transcribed table.

    :param key: ``"table1"`` ... (CSV ``paper_<key>.csv``).
    :param paper: ``"000"`` or ``"002"`` (the file prefix in ``../shared/papers/``).
    :param number: the table's number in its paper.
    :param title: the caption as printed.
    :param reference: the paper.
    :param source: the extraction file and lines the values were copied from.
    :param family: the paper's method as our model family (``"cnn"`` / ``"dbm"``): which of our
        learned models is its counterpart.
    :param method: the paper's method in words.
    :param columns: the printed columns, in order.
    :param blocks: the printed rows, per modality pair.
    :param remarks: what the transcription noticed in the printed numbers.
    """

    key: str
    paper: str
    number: int
    title: str
    reference: str
    source: str
    family: str
    method: str
    columns: tuple[PaperColumn, ...]
    blocks: tuple[PaperBlock, ...]
    remarks: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"paper {self.paper}, Table {self.number}"


# ---------------------------------------------------------------------- notes shared by columns

_CE = ("'Entropy' read as cross entropy CE(T, F) in bits (README); the papers do not define it.")
_H = ("'H' read as conditional entropy H(T | F) in bits, lower better (README); the papers do not define it.")
_REL = ("REL read as the relative L2 error ||F - T|| / ||T|| (lower better); the papers do not define it, "
        "and paper 000's 0.76-0.97 are far from the relative error of a usable fusion, so theirs may be a "
        "similarity.")
_MI = ("Ours: sum over the two sources of I(S_k; F) from 256-bin joint histograms, in nats; "
       "the papers give neither the definition nor the unit.")
_TIME = ("Seconds per fusion. Theirs: machine, software and image size not stated; "
         "ours: this run's device, mean over the timed repeats, fusion only.")
_SSIM = "SSIM(T, F) against the target image (Wang et al. 2004, 11 x 11 Gaussian window)."
_Q = "Against the two sources, on our 0-255 scale (Q0, QW, QE: 8 x 8 windows; Q^AB/F: Xydeas & Petrovic)."

# ---------------------------------------------------------------------- paper 002, TABLE 1

TABLE_1 = PaperTable(
    key="table1", paper="002", number=1, title="Comparison of results.", reference=PAPER_002,
    source="002_6aa670839a80a403.txt, lines 188-201 (no page breaks in the extraction)",
    family="cnn", method="the paper's supervised CNN",
    columns=(
        PaperColumn("RMSE", "RMSE", UNIT_SCALE, "On [0, 1] (their PSNR = 20 log10(1 / RMSE) to 0.011 dB): ours / 255."),
        PaperColumn("PSNR", "PSNR", 1.0, "dB; the peak is the scale's maximum on both sides, so no conversion."),
        PaperColumn("Entropy", "CE", 1.0, _CE),
        PaperColumn("REL", "REL", 1.0, _REL),
        PaperColumn("SSIM", "SSIM", 1.0, _SSIM),
        PaperColumn("H", "H", 1.0, _H + " Their H equals their ENT in every row."),
        PaperColumn("MI", "MI", 1.0, _MI),
        PaperColumn("Mean", "MEAN", UNIT_SCALE, "Assumed on [0, 1] like their RMSE: ours / 255."),
        PaperColumn("STD", "STD", UNIT_SCALE, "Assumed on [0, 1] like their RMSE: ours / 255."),
        PaperColumn("ENT", "EN", 1.0, "Shannon entropy of the 256-bin histogram in bits; their 0.2-0.94 bits "
                                      "are far below a grey-level image's usual several bits, so theirs is "
                                      "computed some other way (not stated)."),
        PaperColumn("GRAD", "GRAD", UNIT_SCALE, "Assumed on [0, 1] like their RMSE: ours / 255."),
        PaperColumn("Time (s)", TIME, 1.0, _TIME),
    ),
    blocks=(PaperBlock("not stated", (CT_MRI, MRI_SPECT), (
        (0.3695, 8.6466, 0.8918, 0.2014, 0.9943, 0.1987, 0.0580, 0.0309, 0.1730, 0.1987, 0.0511, 1.2776),
        (0.3273, 9.7007, 0.9805, 0.4291, 0.9955, 0.4939, 0.1404, 0.1080, 0.3104, 0.4939, 0.1718, 1.8766),
        (0.3576, 8.9332, 1.1560, 0.4016, 0.9947, 0.5146, 0.1483, 0.1149, 0.3189, 0.5146, 0.1797, 1.9045),
        (0.4786, 6.4112, 2.8396, 0.2986, 0.9907, 0.8361, 0.1125, 0.2663, 0.4420, 0.8361, 0.3562, 1.7547),
        (0.4027, 7.9010, 1.7262, 0.3904, 0.9932, 0.6382, 0.1670, 0.1617, 0.3681, 0.6382, 0.2093, 1.9323),
        (0.4113, 7.7176, 1.0713, 0.2315, 0.9929, 0.3335, 0.0893, 0.0615, 0.2403, 0.3335, 0.1006, 1.5789),
        (0.3710, 8.6134, 0.9708, 0.2967, 0.9943, 0.3194, 0.1109, 0.0580, 0.2337, 0.3194, 0.0872, 1.4625),
        (0.4505, 6.9269, 2.5827, 0.3535, 0.9916, 0.8121, 0.1374, 0.2505, 0.4333, 0.8121, 0.3433, 1.9378),
        (0.5499, 5.1947, 3.1892, 0.1770, 0.9878, 0.9378, 0.1259, 0.3542, 0.4783, 0.9378, 0.4771, 1.6932),
        (0.4246, 7.4413, 1.2606, 0.2879, 0.9926, 0.6866, 0.0880, 0.1830, 0.3867, 0.6866, 0.2644, 1.8334),
    )),),
    remarks=(
        "The table does not say which modality pair it is (the section is headed 'Experimental Results on "
        "CT and SPECT Images', the data sets are CT and MRI and MRI and SPECT), so both of our pairs are "
        "filled beside the same printed values.",
        "The H and ENT columns are identical in all ten rows.",
        "The MI and H headers are Cyrillic look-alike letters in the extraction (OCR); read as MI and H.",
        "RMSE of 0.33-0.55 on [0, 1] (PSNR 5-10 dB) next to SSIM of 0.988-0.996 is an unusual pair: an "
        "error of a third of the range with near-perfect structural similarity.",
    ),
)

# ---------------------------------------------------------------------- paper 002, TABLE 2

_Q_COLUMNS = (
    PaperColumn("Q0", "Q0", 1.0, _Q),
    PaperColumn("QE", "QE", 1.0, _Q + " QE is QW of Sobel edge images with alpha = 1 (README); the paper gives "
                                      "neither the edge operator nor alpha."),
    PaperColumn("QW", "QW", 1.0, _Q),
    PaperColumn("QAB/F", "QABF", 1.0, _Q),
)

TABLE_2 = PaperTable(
    key="table2", paper="002", number=2, title="Comparison of results.", reference=PAPER_002,
    source="002_6aa670839a80a403.txt, lines 204-217 (no page breaks in the extraction)",
    family="cnn", method="the paper's supervised CNN",
    columns=_Q_COLUMNS,
    blocks=(
        PaperBlock("CT and MRI", (CT_MRI,), (
            (0.9886, 0.8002, 0.8707, 0.8911), (0.7406, 0.3092, 0.7411, 0.5919), (0.5953, 0.1622, 0.4622, 0.4257),
            (0.8515, 0.3678, 0.8870, 0.5432), (0.6273, 0.2814, 0.6935, 0.3949), (0.8322, 0.5549, 0.8716, 0.7103),
            (0.8392, 0.3273, 0.8057, 0.6090), (0.7258, 0.3213, 0.7667, 0.5359), (0.4821, 0.2439, 0.6412, 0.3240),
            (0.7572, 0.2698, 0.6946, 0.3338),
        )),
        PaperBlock("MRI and SPECT", (MRI_SPECT,), (
            (0.7658, 0.1177, 0.5633, 0.2164), (0.7518, 0.1578, 0.5928, 0.2431), (0.7629, 0.1363, 0.5581, 0.2239),
            (0.6145, 0.2247, 0.6470, 0.2701), (0.6692, 0.1350, 0.5861, 0.2359), (0.7403, 0.1392, 0.5645, 0.2381),
            (0.7702, 0.1511, 0.5670, 0.2276), (0.6948, 0.2668, 0.6100, 0.2897), (0.4683, 0.1519, 0.6474, 0.3281),
            (0.5972, 0.2298, 0.6886, 0.2961),
        )),
    ),
    remarks=(
        "The paper states the four indices lie in [0, 1], larger is better; window sizes and the "
        "implementation are not given.",
    ),
)

# ---------------------------------------------------------------------- paper 000, Table 3

TABLE_3 = PaperTable(
    key="table3", paper="000", number=3, title="Comparison of results in CT and MRI images.", reference=PAPER_000,
    source="000_c6e9e2eaf8fd772c.txt, lines 197-210 (no page breaks in the extraction)",
    family="dbm", method="the paper's deep Boltzmann machine (stacked RBMs, supervised)",
    columns=(
        PaperColumn("EOG", "EOG", 1.0, "Ours: mean of dx^2 + dy^2 on 0-255 (grey levels^2 / px); their 0.019-0.051 "
                                       "is on some other, unstated normalisation."),
        PaperColumn("RMSE", "RMSE", 1.0, "0-255 scale on both sides (their PSNR = 20 log10(255 / RMSE) in 9 of 10 "
                                         "rows)."),
        PaperColumn("PSNR", "PSNR", 1.0, "dB, peak 255."),
        PaperColumn("Entropy", "CE", 1.0, _CE),
        PaperColumn("SF", "SF", 1.0, "Spatial frequency on 0-255, as Eskicioglu & Fisher."),
        PaperColumn("REL", "REL", 1.0, _REL),
        PaperColumn("SSIM", "SSIM", 1.0, _SSIM),
        PaperColumn("H", "H", 1.0, _H + " Their 5.7-7.4 bits are the range of a fused image's own entropy "
                                         "(our EN), so their H is probably EN."),
        PaperColumn("MI", "MI", 1.0, _MI),
        PaperColumn("MEAN", "MEAN", 1.0, "Grey level, 0-255."),
        PaperColumn("STD", "STD", 1.0, "Grey level, 0-255 (population standard deviation)."),
        PaperColumn("GRAD", "GRAD", 1.0, "Average gradient on 0-255."),
        PaperColumn("TIME (s)", TIME, 1.0, _TIME),
    ),
    blocks=(PaperBlock("CT and MRI", (CT_MRI,), (
        (0.0382, 41.0644, 15.8615, 1.9226, 15.2158, 0.7618, 0.9950, 6.7339, 1.4421, 96.6570, 40.9483, 5.1724, 1.9843),
        (0.0392, 23.6111, 20.6685, 1.4407, 10.4070, 0.9126, 0.9870, 5.9261, 1.6457, 87.5130, 51.2122, 3.3713, 1.9081),
        (0.0229, 44.9188, 15.0822, 1.1018, 14.4439, 0.7732, 0.9906, 7.1931, 1.8145, 84.1888, 53.5341, 6.4110, 1.8060),
        (0.0420, 21.7137, 21.3961, 0.8414, 11.8741, 0.8639, 0.8510, 5.7112, 1.4747, 40.1885, 36.4815, 3.6244, 1.9074),
        (0.0509, 42.0040, 15.6650, 1.1411, 17.6166, 0.8149, 0.9062, 7.4402, 1.6701, 81.4598, 58.0940, 0.6123, 1.9013),
        (0.0190, 17.4056, 17.0547, 0.5633, 10.5152, 0.8978, 0.9725, 6.1563, 1.3734, 39.9128, 18.9756, 5.1018, 1.7789),
        (0.0452, 38.2454, 16.4792, 1.9966, 21.2161, 0.9749, 0.6002, 7.4146, 1.9814, 103.7848, 84.9175, 7.2501,
         1.9624),
        (0.0389, 35.3230, 17.1697, 1.3424, 14.0835, 0.8400, 0.9003, 6.2220, 1.4598, 46.9382, 52.6670, 3.8931, 1.8790),
        (0.0195, 36.6529, 16.8486, 2.3213, 10.0064, 0.7714, 0.9987, 6.8299, 1.6847, 50.5727, 43.4916, 3.9461, 1.7992),
        (0.0483, 39.9292, 16.1050, 0.5429, 15.3944, 0.8343, 0.9020, 6.2898, 1.7874, 58.7925, 62.1224, 4.9946, 1.9038),
    )),),
    remarks=(
        "Test-6: RMSE 17.4056 and PSNR 17.0547 dB disagree (RMSE 17.4056 gives 23.32 dB; 17.0547 dB needs "
        "RMSE 35.8); every other row agrees to 0.0001 dB. Printed as is.",
        "Test-5: GRAD 0.6123 is a tenth of the other rows (3.4-7.3) with an ordinary SF of 17.6. Printed as is.",
        "The text says each experiment is repeated 50 times and the means recorded; the table gives no spread.",
    ),
)

#: The transcribed tables, in order.
PAPER_TABLES: dict[str, PaperTable] = {t.key: t for t in (TABLE_1, TABLE_2, TABLE_3)}

#: What differs for every table: shown above the tables in the report.
GENERAL_DIFFERENCES: tuple[str, ...] = (
    "Data: the papers fuse registered clinical images ('the standard medical image database', paper 000; "
    "public data from metapix.de, paper 002), size not stated, with 'target images' whose making is not "
    "described; ours are held-out seeded head "
    "phantoms (CT brain window, T1-weighted MRI, SPECT) whose targets are made by the documented "
    "saliency-blend rule (MedFusionLib/data/targets.py). Test k of ours and Test k of theirs are different "
    "images: only the columns and the summary statistics are comparable, not the rows. Image size, noise and "
    "content drive the image-only columns (SF, GRAD, EOG, MEAN, STD, entropies) as much as the method does.",
    "Methods: ours are MedFusion's models, not the papers' networks (whose architecture and weights are not "
    "published): the shipped pyramid-weight CNN stands in for paper 002's CNN, a DBM trained by this study "
    "(or the one given) for paper 000's DBM. The baselines are extra rows; the papers print no numbers for "
    "the methods they compare with.",
    "Repeats: the papers average 50 (paper 000) or more than 100 (paper 002) runs per experiment. Our fusion "
    "is deterministic (see the repeat study), so the metrics come from one fusion (the repeats' outputs are "
    "checked to be bit-identical) and only the time is averaged.",
    "Metric definitions: the papers cite references but do not define their metrics; ours are the README's "
    "(per-column notes). Where the printed numbers show the scale (RMSE and PSNR), ours are converted.",
)


def paper_metrics(tables: dict[str, PaperTable] | None = None) -> list[str]:
    """Our metric keys the tables need (time excluded), first-seen order.

    :param tables: default :data:`PAPER_TABLES`.
    """
    chosen = PAPER_TABLES if tables is None else tables
    return list(dict.fromkeys(c.metric for t in chosen.values() for c in t.columns if c.metric != TIME))


__all__ = ["GENERAL_DIFFERENCES", "PAPER_TABLES", "PaperBlock", "PaperColumn", "PaperTable", "paper_metrics"]
