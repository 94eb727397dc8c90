"""`rextransfer recipes`: list the recipes; `rextransfer recipes show NAME` prints one resolved.

Parses and reports only; the logic is in `rextransfer.recipes` (no heavy imports here).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

recipes_app = typer.Typer(
    help="Recipes: commented starting settings per dataset (recipes/*.yaml). Without a sub-command, list them.",
    no_args_is_help=False,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@recipes_app.callback()
def _list(ctx: typer.Context) -> None:
    """List the recipes: name, what it is for, and which datasets use it by default."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from ..core.console import out
    from ..config.recipes import list_recipes, recipes_dir
    from ..data import recipe_defaults

    defaults = recipe_defaults()
    table = Table(title=f"Recipes in {recipes_dir()}", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("description")
    table.add_column("default for")
    for row in list_recipes():
        table.add_row(row["name"], row["description"], ", ".join(defaults.get(row["name"], [])) or "--recipe " + row["name"])
    out.print(table)
    out.print("Show one resolved for a backbone: rextransfer recipes show NAME --model resnet50", markup=False)


@recipes_app.command("show", no_args_is_help=True)
def show(
    name: Annotated[str, typer.Argument(help="Recipe name (see `rextransfer recipes`) or a recipe .yaml file.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Backbone whose overrides to apply: rexnet, resnet50, efficientnet_b0 or a timm name.")] = None,
    width: Annotated[Optional[float], typer.Option("--width", "-w", help="ReXNet width multiplier.")] = None,
    n_train: Annotated[Optional[int], typer.Option("--n-train", help="Training-set size, to see what a size-dependent recipe (folder) picks.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset to record (default: the one the recipe is made for).")] = None,
) -> None:
    """Print the full resolved settings (YAML) a recipe gives a backbone: defaults + recipe + overrides."""
    from ..config.settings import to_yaml
    from ..core.console import out
    from ..config.recipes import load_recipe, resolve_run_config
    from ..models.registry import finetune_defaults
    from ..data import recipe_defaults

    recipe = load_recipe(name)  # unknown name -> one-line error listing the recipes
    if dataset is None:
        made_for = recipe_defaults().get(recipe.name, [])
        dataset = made_for[0] if made_for and made_for[0] != "image folders" else "<dataset>"
    cfg = resolve_run_config(dataset, recipe=name, model_hint=model, config_file=None,
                             flags={"width": width}, sets=[], n_train=n_train,
                             backbone_defaults=finetune_defaults)
    header = f"# recipe {recipe.name} ({recipe.path}) for model {cfg.model}"
    if recipe.hyperrule:
        header += f", training-set size {n_train}" if n_train else "; schedule from the training-set size at run time (try --n-train N)"
    out.print(f"{header}\n# {recipe.description}\n{to_yaml(cfg)}", markup=False, highlight=False, end="")


def register(app: typer.Typer) -> None:
    app.add_typer(recipes_app, name="recipes")
