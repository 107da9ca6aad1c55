#pragma once
// Training on the CPU engine, one topic per header (include the ones you use):
//   effnet/train/param_map.hpp    ParamMap: canonical parameter name -> tensor
//   effnet/train/rng.hpp          mix_seed and Rng: counter-based, resumable random streams
//   effnet/train/optimizer.hpp    SGD, RMSProp, AdamW (OptimizerConfig, Optimizer), clip_grad_norm
//   effnet/train/schedule.hpp     learning-rate schedules: warmup, cosine, step
//   effnet/train/loss_scaler.hpp  the AMP dynamic loss scaler
//   effnet/train/augment.hpp      RandomResizedCrop + flip, the validation transform
//   effnet/train/dataset.hpp      the image-folder dataset and its prefetching DataLoader
//   effnet/train/trainer.hpp      Trainer: one CPU training step, evaluation, top-k counts
//   effnet/train/checkpoint.hpp   atomic checkpoints with exact resume; the architecture as JSON
//   effnet/train/plot.hpp         loss / accuracy curves as PNG
// This header includes them all. Determinism: every random choice is a pure function of
// (seed, epoch, index) or (seed, step), so a run resumed from a checkpoint repeats the
// uninterrupted run bit for bit (given the same machine and thread count).
#include "effnet/train/augment.hpp"
#include "effnet/train/checkpoint.hpp"
#include "effnet/train/dataset.hpp"
#include "effnet/train/loss_scaler.hpp"
#include "effnet/train/optimizer.hpp"
#include "effnet/train/param_map.hpp"
#include "effnet/train/plot.hpp"
#include "effnet/train/rng.hpp"
#include "effnet/train/schedule.hpp"
#include "effnet/train/trainer.hpp"
