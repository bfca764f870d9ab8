"""One ReDPO step of a pruned student against its full teacher, as the backbone tests take it."""
import torch

from vip.redpo import pair_loss


def one_redpo_step(teacher, student, prompts):
    """Returns (the policy's parameters before the step, the policy, loss before, loss after the step)."""
    torch.manual_seed(0)
    policy = student.trainable_module().train().requires_grad_(True)
    text = student.encode_prompts(prompts)
    x_w, x_l = torch.randn(2, *teacher.latent_shape), torch.randn(2, *teacher.latent_shape)
    noise, t = torch.randn_like(x_w), torch.tensor([300, 700])

    def loss():
        return pair_loss(policy=lambda x, t_: student.predict(x, t_, text.repeat(2, 1, 1)),
                         teacher=lambda x, t_: teacher.predict(x, t_, text.repeat(x.shape[0] // 2, 1, 1)),
                         scheduler=student.scheduler, x_w=x_w, x_l=x_l, noise=noise, t=t, beta=500.0, w_sft=10.0)

    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    opt = torch.optim.Adam(policy.parameters(), lr=1e-4)
    first = loss()
    first.loss.backward()
    opt.step()
    with torch.no_grad():
        second = loss()
    return before, policy, first.loss.item(), second.loss.item()
