// effnet._effnet.GpuTrainer: the GPU training step (forward, loss, backward, optimizer update),
// with an optional dynamic loss scale for AMP fp16 (train::LossScaler's policy). Constructing one
// without CUDA raises effnet.Error with the library's message.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <cstring>
#include <memory>
#include <optional>

#include "common.hpp"
#include "effnet/error.hpp"
#include "effnet/gpu_training.hpp"
#include "effnet/train/loss_scaler.hpp"

namespace effnet::py {

namespace {

class Trainer {
public:
    Trainer(Model& model, int batch, int height, int width, const std::string& precision,
            const std::string& optimizer, double momentum, bool nesterov, double weight_decay,
            double label_smoothing, double clip_grad_norm, std::optional<double> loss_scale,
            std::optional<bool> dynamic_loss_scale, bool deterministic, bool dropout, bool allow_tf32,
            int device_index)
        : classes_(model.config.num_classes) {
        GpuTrainOptions o;
        try {
            precision_ = parse_train_precision(precision);
            o.optimizer.kind = train::parse_optimizer(optimizer);
        } catch (const Error& e) {
            value_error(e.what());
        }
        if (batch < 1 || height < 1 || width < 1)
            value_error("batch, height and width must be >= 1, got " + std::to_string(batch) + ", " +
                        std::to_string(height) + ", " + std::to_string(width));
        o.optimizer.momentum = momentum;
        o.optimizer.nesterov = nesterov;
        o.optimizer.weight_decay = weight_decay;
        o.label_smoothing = float(label_smoothing);
        o.clip_grad_norm = clip_grad_norm;
        o.deterministic = deterministic;
        o.dropout = dropout;
        o.allow_tf32 = allow_tf32;
        o.device = device_index;
        dynamic_ = dynamic_loss_scale.value_or(precision_ == TrainPrecision::AmpFP16);
        if (dynamic_) {
            train::LossScalerConfig sc;
            if (loss_scale) sc.init_scale = *loss_scale;
            scaler_ = std::make_unique<train::LossScaler>(sc);
            o.loss_scale = float(scaler_->scale());
        } else if (loss_scale) {
            o.loss_scale = float(*loss_scale);
        }
        batch_ = batch, height_ = height, width_ = width;
        nb::gil_scoped_release release;
        trainer_ = std::make_unique<GpuTrainer>(model, batch, height, width, precision_, o);
    }

    float step(nb::handle images, nb::handle labels, double lr, uint64_t seed) {
        const std::vector<int64_t> targets = check_batch(images, labels);
        AnyArray a = as_array(images, "images");
        float loss;
        {
            nb::gil_scoped_release release;
            loss = trainer_->step(static_cast<const float*>(a.data()), targets.data(), lr, seed);
            if (scaler_) {
                scaler_->update(!trainer_->last_step_finite());
                trainer_->set_loss_scale(float(scaler_->scale()));
            }
        }
        return loss;
    }

    float compute_gradients(nb::handle images, nb::handle labels, uint64_t seed) {
        const std::vector<int64_t> targets = check_batch(images, labels);
        AnyArray a = as_array(images, "images");
        nb::gil_scoped_release release;
        return trainer_->compute_gradients(static_cast<const float*>(a.data()), targets.data(), seed);
    }

    bool apply_update(double lr) {
        nb::gil_scoped_release release;
        return trainer_->apply_update(lr);
    }

    nb::object logits() const {
        Tensor t = trainer_->logits();
        return host_array(std::move(t.data), std::vector<size_t>(t.shape.begin(), t.shape.end()), false);
    }

    nb::dict gradients() const {
        cpu::Gradients g = trainer_->gradients();
        nb::dict d;
        for (auto& [name, t] : g.params)
            d[nb::str(name.c_str())] =
                host_array(std::move(t.data), std::vector<size_t>(t.shape.begin(), t.shape.end()), false);
        return d;
    }

    void download(Model& model) const {
        nb::gil_scoped_release release;
        trainer_->download(model);
    }
    void upload(const Model& model) {
        nb::gil_scoped_release release;
        trainer_->upload(model);
    }

    float loss_scale() const { return trainer_->loss_scale(); }
    void set_loss_scale(float s) {
        if (!(s > 0)) value_error("loss_scale must be > 0");
        trainer_->set_loss_scale(s);
        if (scaler_) scaler_->set_state(s, scaler_->good_steps(), scaler_->skipped_steps());
    }
    bool dynamic_loss_scale() const { return bool(scaler_); }
    int64_t skipped_steps() const { return scaler_ ? scaler_->skipped_steps() : 0; }
    bool last_step_finite() const { return trainer_->last_step_finite(); }
    int64_t optimizer_steps() const { return trainer_->optimizer_steps(); }
    double last_grad_norm() const { return trainer_->last_grad_norm(); }
    size_t peak_device_memory() const { return trainer_->peak_device_memory(); }
    int batch() const { return batch_; }
    int height() const { return height_; }
    int width() const { return width_; }
    std::string precision() const { return train_precision_name(precision_); }

private:
    // images: host float32 [batch, 3, height, width] C-contiguous; labels: host integers [batch]
    // in [0, classes). Returns the labels as int64.
    std::vector<int64_t> check_batch(nb::handle images, nb::handle labels) const {
        AnyArray a = as_array(images, "images");
        if (a.device_type() != nb::device::cpu::value)
            value_error("images must be a host array (the trainer uploads from host memory), got " +
                        device_name(a.device_type(), a.device_id()));
        check_float32_contiguous("images", a);
        if (a.ndim() != 4 || int64_t(a.shape(0)) != batch_ || a.shape(1) != 3 ||
            int64_t(a.shape(2)) != height_ || int64_t(a.shape(3)) != width_)
            value_error("images must be [" + std::to_string(batch_) + ", 3, " + std::to_string(height_) +
                        ", " + std::to_string(width_) + "] (the trainer's fixed batch and size), got shape " +
                        shape_text(a));
        AnyArray l = as_array(labels, "labels");
        if (l.device_type() != nb::device::cpu::value)
            value_error("labels must be a host array, got " + device_name(l.device_type(), l.device_id()));
        if (l.ndim() != 1 || int64_t(l.shape(0)) != batch_)
            value_error("labels must be [" + std::to_string(batch_) + "], got shape " + shape_text(l));
        const auto dt = l.dtype();
        const bool is_int = dt.code == uint8_t(nb::dlpack::dtype_code::Int) ||
                            dt.code == uint8_t(nb::dlpack::dtype_code::UInt);
        if (!is_int || !(dt.bits == 8 || dt.bits == 16 || dt.bits == 32 || dt.bits == 64))
            type_error("labels must be integers, got " + dtype_name(dt));
        std::vector<int64_t> out(static_cast<size_t>(batch_));
        const auto* base = static_cast<const uint8_t*>(l.data());
        const int64_t stride = l.stride(0) * (dt.bits / 8);
        const bool is_signed = dt.code == uint8_t(nb::dlpack::dtype_code::Int);
        for (int64_t i = 0; i < batch_; ++i) {
            const uint8_t* p = base + i * stride;
            int64_t v = 0;
            switch (dt.bits) {
            case 8:
                v = is_signed ? int64_t(*reinterpret_cast<const int8_t*>(p)) : int64_t(*p);
                break;
            case 16: {
                int16_t s;
                uint16_t u;
                std::memcpy(&s, p, 2), std::memcpy(&u, p, 2);
                v = is_signed ? int64_t(s) : int64_t(u);
                break;
            }
            case 32: {
                int32_t s;
                uint32_t u;
                std::memcpy(&s, p, 4), std::memcpy(&u, p, 4);
                v = is_signed ? int64_t(s) : int64_t(u);
                break;
            }
            default:
                std::memcpy(&v, p, 8);
            }
            if (v < 0 || v >= classes_ || (!is_signed && dt.bits == 64 && v < 0))
                value_error("labels[" + std::to_string(i) + "] = " + std::to_string(v) +
                            " is not a class in [0, " + std::to_string(classes_) + ")");
            out[size_t(i)] = v;
        }
        return out;
    }

    std::unique_ptr<GpuTrainer> trainer_;
    std::unique_ptr<train::LossScaler> scaler_;
    TrainPrecision precision_ = TrainPrecision::FP32;
    bool dynamic_ = false;
    int batch_ = 0, height_ = 0, width_ = 0, classes_ = 0;
};

} // namespace

void bind_trainer(nb::module_& m) {
    nb::class_<Trainer>(m, "GpuTrainer")
        .def(nb::init<Model&, int, int, int, const std::string&, const std::string&, double, bool, double,
                      double, double, std::optional<double>, std::optional<bool>, bool, bool, bool, int>(),
             nb::arg("model"), nb::arg("batch"), nb::arg("height"), nb::arg("width"),
             nb::arg("precision") = "amp-fp16", nb::arg("optimizer") = "sgd", nb::arg("momentum") = 0.9,
             nb::arg("nesterov") = false, nb::arg("weight_decay") = 0.0, nb::arg("label_smoothing") = 0.0,
             nb::arg("clip_grad_norm") = 0.0, nb::arg("loss_scale") = nb::none(),
             nb::arg("dynamic_loss_scale") = nb::none(), nb::arg("deterministic") = true,
             nb::arg("dropout") = false, nb::arg("allow_tf32") = false, nb::arg("device_index") = 0)
        .def("step", &Trainer::step, nb::arg("images"), nb::arg("labels"), nb::arg("lr"), nb::arg("seed") = 0)
        .def("compute_gradients", &Trainer::compute_gradients, nb::arg("images"), nb::arg("labels"),
             nb::arg("seed") = 0)
        .def("apply_update", &Trainer::apply_update, nb::arg("lr"))
        .def("logits", &Trainer::logits)
        .def("gradients", &Trainer::gradients)
        .def("download", &Trainer::download, nb::arg("model"))
        .def("upload", &Trainer::upload, nb::arg("model"))
        .def_prop_rw("loss_scale", &Trainer::loss_scale, &Trainer::set_loss_scale)
        .def_prop_ro("dynamic_loss_scale", &Trainer::dynamic_loss_scale)
        .def_prop_ro("skipped_steps", &Trainer::skipped_steps)
        .def_prop_ro("last_step_finite", &Trainer::last_step_finite)
        .def_prop_ro("optimizer_steps", &Trainer::optimizer_steps)
        .def_prop_ro("last_grad_norm", &Trainer::last_grad_norm)
        .def_prop_ro("peak_device_memory", &Trainer::peak_device_memory)
        .def_prop_ro("batch", &Trainer::batch)
        .def_prop_ro("height", &Trainer::height)
        .def_prop_ro("width", &Trainer::width)
        .def_prop_ro("precision", &Trainer::precision);
}

} // namespace effnet::py
